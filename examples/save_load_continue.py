"""
Save, load and continue training in a new process.

The first process trains NPG on Acrobot-v1 and saves it; it then starts a second Python process
(this same file with ``--continue``) that loads the zip and trains further with
``reset_num_timesteps=False``, so the step counter (and a tensorboard curve) carries on where it stopped.

Run: ``python examples/save_load_continue.py`` (``SB3_NPG_EXAMPLE_QUICK=1`` for a smoke run).
"""

import argparse
import os
import subprocess
import sys
import tempfile

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_npg import NPG

QUICK = os.environ.get("SB3_NPG_EXAMPLE_QUICK") == "1"
ENV_ID = "Acrobot-v1"
STEPS = 1_024 if QUICK else 30_000


def first_process(path: str) -> None:
    model = NPG("MlpPolicy", ENV_ID, n_steps=1024, seed=0)
    model.learn(total_timesteps=STEPS)
    model.save(path)
    print(f"[process 1] trained {model.num_timesteps} steps, saved to {path}")
    # A brand-new interpreter: nothing but the zip file is shared with it.
    subprocess.run([sys.executable, __file__, "--continue", path], check=True)


def second_process(path: str) -> None:
    model = NPG.load(path, env=make_vec_env(ENV_ID, seed=1))  # the env is not saved: pass one to keep training
    start = model.num_timesteps
    model.learn(total_timesteps=STEPS, reset_num_timesteps=False)
    mean_return, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2 if QUICK else 10)
    print(f"[process 2] loaded at {start} steps, continued to {model.num_timesteps}; mean return {mean_return:.1f}")
    assert model.num_timesteps >= start + STEPS


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--continue", dest="path", help="load this model and keep training it")
    args = parser.parse_args()
    if args.path:
        second_process(args.path)
    else:
        with tempfile.TemporaryDirectory() as folder:
            first_process(os.path.join(folder, "npg_acrobot.zip"))
