"""Would NHWC (channels_last) memory format speed up bf16 training on this CPU? A ResNet forward + backward, alternated.

Times one forward + backward of a torchvision ResNet (random weights, ``--batch`` images of ``--size`` px) under
``torch.autocast("cpu", dtype=torch.bfloat16)``, once in the default NCHW layout and once with the model and the
input in ``torch.channels_last``, alternating the two ``--repeats`` times after two warm-up steps each, and prints
one JSON line with the seconds of every step and the median ratio. The backbone is most of a SOLO training
step's arithmetic (docs/benchmarks.md), so this bounds what the layout change could give ``unsolo train``.

    python bench/channels_last_probe.py --arch resnet18 --batch 4 --size 224 --repeats 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import unsolo  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch starts its OpenMP runtime)
import torch
import torchvision


def step(model: torch.nn.Module, x: torch.Tensor) -> float:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    nchw = getattr(torchvision.models, args.arch)()
    nhwc = getattr(torchvision.models, args.arch)().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)
    xc = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        step(nchw, x), step(nhwc, xc)
    times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for _ in range(args.repeats):
        times["nchw"].append(step(nchw, x))
        times["channels_last"].append(step(nhwc, xc))
    ratio = statistics.median(times["channels_last"]) / statistics.median(times["nchw"])
    print(json.dumps({"arch": args.arch, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
                      "seconds": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
                      "channels_last_over_nchw": round(ratio, 3), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
