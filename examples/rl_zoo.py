"""
The RL Zoo path: train, evaluate and reload NPG with ``rl_zoo3``'s own scripts.

``python -m sb3_npg.train`` is ``rl_zoo3 train`` with NPG registered and the shipped
``sb3_npg/hyperparams/npg.yml`` as its default config; ``python -m sb3_npg.enjoy`` is ``rl_zoo3 enjoy``.
The example calls their ``main(argv)``; the same commands work in a shell::

    python -m sb3_npg.train --algo npg --env CartPole-v1 --seed 0 -f logs
    python -m sb3_npg.enjoy --algo npg --env CartPole-v1 -f logs --no-render -n 2000

Any Zoo option works (``--hyperparams target_kl:0.02``, ``-optimize`` with Optuna, ``--eval-freq``, ...).
In your own Python code, ``sb3_npg.zoo.register()`` adds ``"npg"`` to ``rl_zoo3.utils.ALGOS``.

Run: ``python examples/rl_zoo.py`` (``SB3_NPG_EXAMPLE_QUICK=1`` for a smoke run).
"""

import glob
import os
import tempfile

from sb3_npg import enjoy, train
from sb3_npg.save_load import untrusted_files_supported

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"
ENV_ID = "CartPole-v1"


def run(script: str, *args: str) -> None:
    """``python -m sb3_npg.<script> <args>``, called in this process (same effect as the shell command)."""
    print("$ python -m sb3_npg." + script, " ".join(args), flush=True)
    status = {"train": train.main, "enjoy": enjoy.main}[script](list(args))
    assert status == 0, f"sb3_npg.{script} exited with {status}"


with tempfile.TemporaryDirectory() as logs:
    # 1. Train with the shipped hyperparameters (n_timesteps overridden by -n), one override from the command line.
    budget = ["-n", "2048", "--eval-freq", "-1"] if QUICK else []
    run("train", "--algo", "npg", "--env", ENV_ID, "--seed", "0", "-f", logs, "--verbose", "0",
        "--hyperparams", "target_kl:0.01", *budget)  # fmt: skip
    # 2. Watch / evaluate it as any Zoo agent (here without rendering). enjoy reads the agent without running its
    #    files' code; on a torch below 2.10 that refuses (SECURITY.md), and this agent, trained just above, is trusted.
    trusted = [] if untrusted_files_supported() else ["--trusted"]
    run("enjoy", "--algo", "npg", "--env", ENV_ID, "-f", logs, "--no-render", "-n", "500" if QUICK else "2000", *trusted)

    # 3. The same model from Python: register NPG, then use the Zoo's helpers and the saved files.
    from rl_zoo3.utils import ALGOS, get_latest_run_id

    from sb3_npg.zoo import register

    register()
    run_dir = os.path.join(logs, "npg", f"{ENV_ID}_{get_latest_run_id(os.path.join(logs, 'npg'), ENV_ID)}")
    model = ALGOS["npg"].load(os.path.join(run_dir, f"{ENV_ID}.zip"))
    print(f"Loaded {type(model).__name__} trained for {model.num_timesteps} steps; files: "
          f"{sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir, '*')))}")  # fmt: skip
