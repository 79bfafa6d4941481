"""Run every benchmark: MAML and ProtoNet steps against learn2learn, Trainer.fit throughput, the black-box learners' steps,
batched environment steps against gymnasium, seconds per meta-RL iteration, unrolled
hypergradients, iMAML against second-order MAML, the hypergradient and iMAML against higher and TorchOpt, augmented
episode loading against a MAML step, MetaGAN against its plain learners, FIGR's meta-iterations.

    python -m benchmarks.run_all                       # full sizes (tens of minutes on a 2-core CPU)
    python -m benchmarks.run_all --tiny                # seconds per benchmark: what CI runs
    python -m benchmarks.run_all --json results.json   # also keep the raw numbers
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from benchmarks import (black_box_step, data_loading, env_steps, figr_step, fit_throughput, hypergradient_unroll,
                        imaml_step, maml_step, meta_rl_step, metagan_step, protonet_step, reference_libraries)
from benchmarks.common import add_common_arguments, write_json

BENCHMARKS = {"maml_step": maml_step, "protonet_step": protonet_step, "fit_throughput": fit_throughput,
              "black_box_step": black_box_step, "env_steps": env_steps, "meta_rl_step": meta_rl_step,
              "hypergradient_unroll": hypergradient_unroll, "imaml_step": imaml_step,
              "reference_libraries": reference_libraries, "data_loading": data_loading, "metagan_step": metagan_step,
              "figr_step": figr_step}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    shared = (["--tiny"] if args.tiny else []) + ["--threads", str(args.threads)]
    results = {}
    for name, module in BENCHMARKS.items():
        results[name] = module.main(shared)["raw"]
        print(flush=True)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
