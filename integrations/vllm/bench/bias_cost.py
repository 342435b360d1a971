"""Per-step cost of the channel bias in the vLLM processor: host (numpy) core and device (torch) path.

    .venv/bin/python integrations/vllm/bench/bias_cost.py [--device cuda] [--steps 10]

Each step biases ``batch`` rows (4 accounts + provider-only rows) after fresh random previous tokens
(no row cache hits: the worst case of diverse text), then once more with the same tokens (cache hits).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tracemark.foundation.channel import ChannelKey, ChannelSpec, Keyring
from tracemark.foundation.models.channel_device import add_channel_bias_on_device
from tracemark.foundation.models.channel_processor import add_channel_bias


def _ring() -> Keyring:
    def account(name: str) -> ChannelKey:
        return ChannelKey(secret=name.encode().ljust(32, b"x"), scope="account", name=name)

    return Keyring(ChannelSpec(), ChannelKey(secret=b"p" * 32, scope="provider"), account)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ring, rng = _ring(), np.random.default_rng(0)
    for vocab in (49152, 151936):
        for batch in (8, 64):
            rows = [ring.lists_for(f"acct{i % 4}") if i % 5 else ring.lists_for(None) for i in range(batch)]
            logits = torch.zeros(batch, vocab, device=args.device)
            for name, add in (("host", add_channel_bias), ("device", add_channel_bias_on_device)):
                add(logits, rows, rng.integers(0, vocab, batch).tolist(), inplace=True)  # warm-up
                figures = []
                for fresh in (True, False):
                    prev = rng.integers(0, vocab, batch).tolist()
                    if args.device != "cpu":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        if fresh:
                            prev = rng.integers(0, vocab, batch).tolist()
                        add(logits, rows, prev, inplace=True)
                    if args.device != "cpu":
                        torch.cuda.synchronize()
                    figures.append(1e3 * (time.perf_counter() - start) / args.steps)
                print(
                    f"vocab {vocab:>6} batch {batch:>2} {name:>6} ({args.device}): "
                    f"{figures[0]:7.1f} ms/step fresh contexts, {figures[1]:6.1f} ms/step repeated"
                )


if __name__ == "__main__":
    main()
