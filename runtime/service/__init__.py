"""dit-serve: DiT as an HTTP service on Ray Serve (runtime.service.app), requests batched into the engine.

api.py checks requests without a server, settings.py says what one service is, app.py is the Serve
application (imports Ray Serve and FastAPI), cli.py is dit-serve, page.html the page at GET /.
"""
