"""
K-FAC libraries, part 1 (the project's environment): train a HalfCheetah-v5 NPG policy for 5 updates, export its
actor, a rollout batch, the policy gradient ``g`` and the converged natural gradient ``(F + l I)^-1 g`` to
``kfac_libraries/export_<width>.pt`` in the temporary folder; with ``--time-only``, time sb3_npg's K-FAC direction on
an exported file (both expectations of ``G``) and print its median time and cosine to the natural gradient.

Part 2, ``libraries.py``, runs in a separate environment with curvlinops-for-pytorch and nngeometry installed.

Usage::

    PYTHONPATH=. python benchmarks/investigations/kfac_libraries/export_policy.py --width 64
    PYTHONPATH=. python benchmarks/investigations/kfac_libraries/export_policy.py --width 64 --time-only
"""

import argparse
import json
import pathlib
import statistics
import tempfile
import time
import warnings

import torch as th

from sb3_npg import NPG
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.fisher import make_fisher
from sb3_npg.kfac import KFACPreconditioner
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian

FOLDER = pathlib.Path(tempfile.gettempdir()) / "kfac_libraries"
DAMPING = 0.1


def collect(model: NPG) -> None:
    _, callback = model._setup_learn(model.n_steps, reset_num_timesteps=model._last_obs is None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def model_of(width: int, n_steps: int) -> NPG:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return NPG("MlpPolicy", "HalfCheetah-v5", n_steps=n_steps, cg_damping=DAMPING, seed=0,
                   policy_kwargs=dict(net_arch=[width, width]))  # fmt: skip


def export(width: int) -> None:
    model = model_of(width, 2048)
    collect(model)
    for _ in range(5):
        model.train()
        collect(model)
    data = next(model.rollout_buffer.get(batch_size=None))
    advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
    model.policy.set_training_mode(False)
    jacobian = policy_jacobian(model.policy, model.actor_parameters, data.observations)
    gradient = policy_gradient(jacobian, data.actions, advantages)
    fisher = make_fisher("gauss_newton", model.policy, model.actor_parameters, data.observations, data.actions, DAMPING,
                         jacobian=jacobian)  # fmt: skip
    kfac = KFACPreconditioner(model.policy, model.actor_parameters, data.observations, DAMPING, expectation="exact")
    natural, residual = conjugate_gradient(fisher.damped_matvec, gradient, 200, residual_tol=0, preconditioner=kfac)
    names = {id(parameter): name for name, parameter in model.policy.named_parameters()}
    FOLDER.mkdir(exist_ok=True)
    th.save(
        dict(
            names=[names[id(parameter)] for parameter in model.actor_parameters],
            params=[parameter.detach().clone() for parameter in model.actor_parameters],
            obs=data.observations.float(), g=gradient, exact=natural, residual=residual.norm().item(), lam=DAMPING,
            width=width, factors=[(a.clone(), g.clone()) for a, g in kfac.factors],
            std=model.policy.log_std.detach().exp().clone(),
        ),
        FOLDER / f"export_{width}.pt",
    )  # fmt: skip
    print(f"exported; residual of the natural gradient {residual.norm().item():.2e}")


def time_ours(width: int, repeats: int = 5) -> None:
    exported = th.load(FOLDER / f"export_{width}.pt")
    model = model_of(width, 64)
    by_name = dict(zip(exported["names"], exported["params"], strict=True))
    with th.no_grad():
        for name, parameter in model.policy.named_parameters():
            if name in by_name:
                parameter.copy_(by_name[name])
    model.policy.set_training_mode(False)
    result = {}
    for expectation in ("sampled", "exact"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kfac = KFACPreconditioner(model.policy, model.actor_parameters, exported["obs"], exported["lam"],
                                      expectation=expectation)  # fmt: skip
            direction = kfac(exported["g"])
            times.append(time.perf_counter() - start)
        result[f"sb3_npg {expectation}"] = dict(
            ms=1000 * statistics.median(times), cosine=cosine(direction, exported["exact"])
        )
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--time-only", action="store_true")
    args = parser.parse_args()
    th.set_num_threads(1)
    time_ours(args.width) if args.time_only else export(args.width)
