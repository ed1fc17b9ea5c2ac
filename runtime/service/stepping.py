"""Step-level (continuous) batching: a replica's running images, one denoiser call at a time, as Orca and
vLLM batch a language model's iterations rather than its requests.

    batcher = StepBatcher(denoiser, decoder, max_batch=8, replica="a1b2c3d4")
    finished = batcher.step(joining)    # joining: [(Item, arrived, ticket)] -> [(ticket, Made | Exception)]

Before every call the images that joined begin their trajectories: one per run of images with the
same schedule (Item.schedule: sampler and steps; labels, seeds and cfg scales differ freely, the
graph takes t, y and the scale per row), each with a PerSampleNoise over its (seed, index) pairs.
Then one denoiser call (runtime.sampling.core.step) takes every running image, each at its own
timestep, sampler, step count and cfg scale, and each trajectory takes its own step; a diffusers
scheduler's state lives with its trajectory. A trajectory whose last step that was is decoded and
answered at once, while the others run on. The caller keeps the running images within max_batch
(StepBatcher.room) and drives the loop (StepLoop: an asyncio task per replica, each step in a thread).

An image's noise comes from its own (seed, index) generator whatever it runs beside, so image i of a
request with seed S is sample i of `dit-run --seeding per-sample --seed S`. A per-request option
that must be equal within a trajectory (a guidance interval, a cache policy) is one more field of
Item and of its schedule; the trajectory's items carry it to the step.
"""

import asyncio
import sys
from dataclasses import dataclass

import numpy as np
import torch

from runtime.images import png_bytes
from runtime.sampling import CallOptions, FiniteWatch, Trajectory, sampler_from_name, step
from runtime.sampling.noise import PerSampleNoise


@dataclass(frozen=True)
class Item:
    """One image of one request."""

    label: int
    seed: int  # the request's
    index: int  # the image's position in its request: its per-sample key is (seed, index)
    sampler: str
    steps: int
    cfg_scale: float
    options: CallOptions = CallOptions()  # the request's guidance interval and cache policy (runtime.plan)

    @property
    def schedule(self) -> tuple:
        """What images must share to be one trajectory (the timesteps and the sampler's state, and the options
        of every call: a guidance interval, a cache policy, whose features are cached together)."""
        return self.sampler, self.steps, self.options


@dataclass(frozen=True)
class Calls:
    """Which of its replica's denoiser calls an image took part in: every one from first to last."""

    replica: str  # the replica's own id
    arrived: int  # calls the replica had started when the image reached it
    first: int  # the call numbers (1, 2, ... per replica) of its first and last step
    last: int

    def to_dict(self) -> dict:
        return {"replica": self.replica, "arrived": self.arrived, "first": self.first, "last": self.last}


@dataclass(frozen=True)
class Made:
    """One finished image."""

    png: bytes
    label: int
    batch_size: int  # the largest denoiser batch it was in (images of any request)
    calls: Calls


@dataclass
class Group:
    """Images that began together with one schedule: one trajectory, one ticket per image."""

    items: list[Item]
    arrived: list[int]
    tickets: list
    trajectory: Trajectory
    first_call: int
    largest_batch: int = 0


class StepBatcher:
    """The running set of one replica; step() is called from one thread at a time."""

    def __init__(self, denoiser, decoder, max_batch: int, replica: str, metadata: dict | None = None):
        self.denoiser, self.decoder, self.max_batch = denoiser, decoder, max_batch
        self.replica, self.metadata = replica, metadata or {}
        self.running: list[Group] = []

    @property
    def rows(self) -> int:
        return sum(len(group.items) for group in self.running)

    def room(self) -> int:
        """How many more images the next call can take."""
        return self.max_batch - self.rows

    def drop(self, abandoned) -> None:
        """Stop running the groups whose every ticket is abandoned(ticket) (their clients went away)."""
        self.running = [group for group in self.running if not all(map(abandoned, group.tickets))]

    def step(self, joining: list[tuple]) -> list[tuple]:
        """Begin the joining (item, arrived, ticket)s, make one denoiser call for every running image, and
        return (ticket, Made or the exception) for each image that finished or failed."""
        with torch.inference_mode():
            outcomes = self.begin(joining)
            if not self.running:
                return outcomes
            rows, first_call = self.rows, self.denoiser.calls + 1
            try:
                step(self.denoiser, [group.trajectory for group in self.running])
            except Exception as error:  # the denoiser failed: every image in the call fails with it
                failed, self.running = self.running, []
                return outcomes + [(ticket, error) for group in failed for ticket in group.tickets]
            for group in self.running:
                group.largest_batch = max(group.largest_batch, rows)
                group.first_call = group.first_call or first_call
            done = [group for group in self.running if group.trajectory.done]
            self.running = [group for group in self.running if not group.trajectory.done]
            return outcomes + [outcome for group in done for outcome in self.finish(group)]

    def begin(self, joining: list[tuple]) -> list[tuple]:
        """A Group per run of joining images with one schedule; (ticket, exception) for any that cannot begin."""
        failed, by_schedule = [], {}
        for job in joining:
            by_schedule.setdefault(job[0].schedule, []).append(job)
        for jobs in by_schedule.values():
            items, arrived, tickets = map(list, zip(*jobs))
            try:
                self.running.append(Group(items, arrived, tickets, self.trajectory(items), first_call=0))
            except Exception as error:
                failed += [(ticket, error) for ticket in tickets]
        return failed

    def trajectory(self, items: list[Item]) -> Trajectory:
        """Items of one schedule at step 0: their (seed, index) noise, labels and cfg scales."""
        device = self.denoiser.device
        noise = PerSampleNoise([item.seed for item in items], [item.index for item in items], device)
        provenance = self.denoiser.provenance
        x, y = noise.draw_batch([item.label for item in items], provenance.latent_shape, provenance.num_classes)
        scale = torch.tensor([item.cfg_scale for item in items], dtype=torch.float32)  # (n,), on the CPU
        sampler = sampler_from_name(items[0].sampler, items[0].steps)
        trajectory = sampler.begin(x, y, scale, noise, backend=self.denoiser.name, options=items[0].options)
        # NaN or inf is told by result(), for this trajectory alone, never from the middle of a shared step.
        trajectory.watch = FiniteWatch(device, sampler.timesteps, self.denoiser.name, check_every=sys.maxsize,
                                       eager=False)
        return trajectory

    def finish(self, group: Group) -> list[tuple]:
        """(ticket, Made) for each image of a finished group, decoded; (ticket, exception) if it failed."""
        try:
            x = group.trajectory.result()  # (n, C, L, L); DiTError if a step made NaN or inf
            images = self.decoder(x)  # uint8 (n, H, W, channels)
        except Exception as error:
            return [(ticket, error) for ticket in group.tickets]
        labels = group.trajectory.y.cpu().numpy()
        last = self.denoiser.calls
        return [(ticket, Made(png_bytes(np.asarray(image), self.metadata), int(label), group.largest_batch,
                              Calls(self.replica, arrived, group.first_call, last)))
                for ticket, image, label, arrived in zip(group.tickets, images, labels, group.arrived)]


class StepLoop:
    """Feeds a StepBatcher from an asyncio queue: an image waits in the queue until there is room, and
    joins at the next denoiser call; each call runs in a thread, so the replica's event loop keeps
    taking requests. One loop task per replica, started by the first image."""

    def __init__(self, batcher: StepBatcher):
        self.batcher = batcher
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.started = 0  # the number of the last call handed to the thread (set on the event loop, so exact)

    async def make(self, item: Item) -> Made:
        """The image, made beside whatever else runs; raises what made it fail."""
        if self.task is None or self.task.done():
            self.queue = self.queue or asyncio.Queue()
            self.task = asyncio.create_task(self.run())
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, self.started, future))  # it joins call started + 1, if there is room
        return await future  # cancelled with this call when its client goes away

    async def run(self) -> None:
        """Until the replica stops: take what fits, one denoiser call, answer what finished."""
        joining = []
        try:
            while True:
                joining = [] if self.batcher.running else [await self.queue.get()]  # idle: wait for an image
                while len(joining) < self.batcher.room() and not self.queue.empty():
                    joining.append(self.queue.get_nowait())
                joining = [job for job in joining if not job[2].done()]  # cancelled while it waited
                self.batcher.drop(lambda future: future.done())
                self.started = self.batcher.denoiser.calls + 1  # the thread is idle: its count is settled
                for future, outcome in await asyncio.to_thread(self.batcher.step, joining):
                    settle(future, outcome)
        except BaseException as error:  # stopping (cancelled), or a fault of the loop itself: nobody waits forever
            held = [job[2] for job in joining] + [ticket for group in self.batcher.running for ticket in group.tickets]
            while not self.queue.empty():
                held.append(self.queue.get_nowait()[2])
            self.batcher.running = []
            for future in held:
                if isinstance(error, Exception):
                    settle(future, error)
                else:
                    future.cancel()
            raise


def settle(future: asyncio.Future, outcome) -> None:
    """The image's answer or failure, unless its caller has gone."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
