"""A benchmark training script: the CIFAR-10 CNN (jobs/cifar10/model.py) on synthetic CIFAR-shaped data.

Each site makes --samples random 32x32x3 images with random labels (seeded by its
name: no data set to download, the same work as real images) and each round
trains --epochs epochs of SGD on them with --threads torch threads, then sends the
weight difference. It reports its own training time (the weights loaded to the
difference made) as the metric train_s.<site>, and prints to its log when it
started (its first line, before any import) and when its imports were done.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before anything is imported: the process (or the warm one's script) starts here

import argparse  # noqa: E402
import zlib  # noqa: E402

import torch  # noqa: E402
from model import ModerateCNN  # type: ignore[import-not-found]  # noqa: E402
from torch import nn  # noqa: E402

from fedsec import client as fl  # noqa: E402
from fedsec.client import FLModel, ParamsType  # noqa: E402
from fedsec.client.torch_io import load_into, to_numpy  # noqa: E402

print(f"script started_at={STARTED:.6f} imported_at={time.time():.6f}", flush=True)
parser = argparse.ArgumentParser()
parser.add_argument("--samples", type=int, default=500)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

fl.init()
site = fl.site_name()
generator = torch.Generator().manual_seed(zlib.crc32(site.encode()))
images = torch.rand((args.samples, 3, 32, 32), generator=generator)
labels = torch.randint(0, 10, (args.samples,), generator=generator)
net = ModerateCNN()
loss_fn = nn.CrossEntropyLoss()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    if model.task != "train" or model.params is None:
        fl.send(FLModel(metrics={}, meta={"num_examples": 1}))
        continue
    began = time.perf_counter()
    load_into(net, model.params)
    global_params = to_numpy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    steps = 0
    for _ in range(args.epochs):
        order = torch.randperm(args.samples, generator=generator)
        for start in range(0, args.samples, args.batch_size):
            batch = order[start : start + args.batch_size]
            opt.zero_grad()
            loss_fn(net(images[batch]), labels[batch]).backward()
            opt.step()
            steps += 1
    diff = {name: value - global_params[name] for name, value in to_numpy(net.state_dict()).items()}
    own = time.perf_counter() - began
    fl.send(
        FLModel(params=diff, params_type=ParamsType.DIFF, metrics={f"train_s.{site}": own}, meta={"num_examples": 1})
    )
print(f"script done_at={time.time():.6f}", flush=True)  # the job is done for this site: only the exit is left
