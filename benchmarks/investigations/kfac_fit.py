"""
Why K-FAC does not halve conjugate gradient's Fisher products on a CNN policy: how closely Kronecker-factored
approximations of the policy's Fisher fit the exact one on one batch.

On one rollout of NPG's ``atari`` entry on BreakoutNoFrameskip-v4 (8 envs x 256 steps, the Fisher on every 5th
state: 410 states, damping 0.1), from a fresh initialisation or from a trained model's weights (``--start-from``),
each approximation ``K`` of ``F + damping I`` is scored by

* the cosine of ``K^-1 g`` to the natural gradient ``(F + damping I)^-1 g`` (200 plain CG steps),
* ``x^T (F + damping I) x / x^T x`` of that direction (where in F's spectrum it lies),
* the preconditioned CG steps (one Fisher product each) that reach the residual of 10 plain CG steps (up to 40).

The approximations: the package's K-FAC (``sb3_npg.kfac``, one sampled action per state, a convolution's factors
from at most 2^14 rows, factored Tikhonov damping) and variants of it (the exact expectation over actions; every
row; damping x10), K-FAC's eigenbasis with the exact damping ``(A ⊗ G + damping I)^-1``, EKFAC (George et al. 2018:
the same eigenbasis, each eigenvalue re-estimated from the per-state gradients, which keeps a convolution's
correlations across positions) and, as the bound of any per-layer approximation, the exact block-diagonal Fisher
(each layer's block solved by 60 CG steps; the direction only, too costly to precondition with).

Usage (from the repository root; needs the ``atari`` extra; 10-15 minutes on one core)::

    python benchmarks/investigations/kfac_fit.py --output init
    python benchmarks/investigations/kfac_fit.py --start-from MODEL.zip --output trained

Findings and records: ``benchmarks/results/kfac_fit/{init,trained}.md``.
"""

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

import ale_py
import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecFrameStack
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from common import RESULTS, machine_line, markdown_table, repository_path, steps_to_residual

from sb3_npg import NPG, kfac
from sb3_npg.conjugate_gradient import conjugate_gradient
from sb3_npg.critic import index_observations
from sb3_npg.fisher import make_fisher
from sb3_npg.parameters import flatten, unflatten
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian

#: The ``atari`` entry's settings (sb3_npg/hyperparams/npg.yml)
ATARI = dict(
    n_steps=256,
    batch_size=256,
    n_critic_updates=4,
    sub_sampling_factor=5,
    learning_rate=2.5e-4,
    target_kl=0.01,
    cg_damping=0.1,
    policy_kwargs=dict(share_features_extractor=False),
)
REFERENCE_STEPS = 200
PCG_LIMIT = 40
BLOCK_STEPS = 60

Solve = Callable[[th.Tensor], th.Tensor]


class EigenbasisPreconditioner:
    """
    ``V -> Q_G [(Q_G^T V Q_A) / (S + damping)] Q_A^T`` per K-FAC layer: K-FAC's eigenbasis with the eigenvalues ``S``
    (``d_G d_A^T``, K-FAC with exact damping, unless :attr:`eigenvalues` are replaced, e.g. by EKFAC's re-estimates)
    and the exact Tikhonov damping. Every actor parameter must be a K-FAC layer's (a categorical policy: no
    ``log_std``).
    """

    def __init__(self, base: kfac.KFACPreconditioner, damping: float):
        self.base, self.damping = base, damping
        #: per layer, the eigenvectors ``(Q_A, Q_G)`` of its factors, and the eigenvalues ``S`` (``out x in``)
        self.bases: list[tuple[th.Tensor, th.Tensor]] = []
        self.eigenvalues: list[th.Tensor] = []
        for a_factor, g_factor in base.factors:
            a_values, a_vectors = th.linalg.eigh(a_factor.double())
            g_values, g_vectors = th.linalg.eigh(g_factor.double())
            self.bases.append((a_vectors.float(), g_vectors.float()))
            self.eigenvalues.append((g_values.clamp(min=0)[:, None] * a_values.clamp(min=0)[None, :]).float())

    def __call__(self, vector: th.Tensor) -> th.Tensor:
        chunks = unflatten(vector, self.base.parameters)
        result = list(chunks)
        for layer, (a_vectors, g_vectors), values in zip(self.base.layers, self.bases, self.eigenvalues, strict=True):
            rotated = g_vectors.T @ kfac.layer_matrix(layer, chunks) @ a_vectors / (values + self.damping)
            kfac.set_layer_matrix(layer, g_vectors @ rotated @ a_vectors.T, result)
        return flatten(result)


def ekfac_eigenvalues(
    policy: ActorCriticPolicy, preconditioner: EigenbasisPreconditioner, observations: th.Tensor
) -> list[th.Tensor]:
    """
    EKFAC's eigenvalues per layer in ``preconditioner``'s eigenbasis: the mean over states and the exact
    expectation's columns of the squared per-state gradient, ``(Q_G^T (sum_t delta_t a_t^T) Q_A)^2``, from every
    state of the batch (each layer called once).
    """
    layers = preconditioner.base.layers
    values = []
    n_states = len(observations)
    calls_per_layer = kfac.layer_calls(policy, layers, observations, expectation="exact")
    for layer, (a_vectors, g_vectors), calls in zip(layers, preconditioner.bases, calls_per_layer, strict=True):
        (call,) = calls
        module, x, delta = layer.module, call.inputs, call.output_gradients
        assert delta is not None
        n_columns = delta.shape[0]
        if isinstance(module, nn.Conv2d):
            total = th.zeros(g_vectors.shape[1], a_vectors.shape[1])
            for start in range(0, n_states, 32):
                part = slice(start, start + 32)
                patches = kfac._patches(module, x[part]).transpose(1, 2)  # states, positions, inputs
                patches = kfac._with_bias_column(layer, patches.flatten(0, 1)).unflatten(0, patches.shape[:2])
                deltas = delta[:, part].movedim(2, -1).reshape(n_columns, len(patches), -1, g_vectors.shape[0])
                per_state = th.einsum("cnto,nti->cnoi", deltas @ g_vectors, patches @ a_vectors)
                total += (per_state * per_state).sum(dim=(0, 1))
        else:
            rows = kfac._with_bias_column(layer, x.reshape(n_states, -1)) @ a_vectors
            deltas = delta.reshape(n_columns, n_states, -1) @ g_vectors
            total = th.einsum("cno,ni->oi", deltas * deltas, rows * rows)
        values.append(total / n_states)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-from", type=pathlib.Path, default=None, metavar="MODEL", help="a trained atari model")
    parser.add_argument("--output", required=True, help="record name in benchmarks/results/kfac_fit/")
    args = parser.parse_args()
    th.set_num_threads(1)
    gym.register_envs(ale_py)  # the Atari envs
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=8, seed=0), n_stack=4)
    model = NPG("CnnPolicy", env, seed=0, device="cpu", num_threads=1, **ATARI)  # type: ignore[arg-type]
    if args.start_from is not None:
        model.policy.load_state_dict(NPG.load(args.start_from, device="cpu").policy.state_dict())
    _, callback = model._setup_learn(model.n_steps * model.n_envs)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)  # type: ignore[arg-type]
    data = next(model.rollout_buffer.get(batch_size=None))
    actions = data.actions.long().flatten()
    advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
    model.policy.set_training_mode(False)
    parameters = model.actor_parameters
    gradient = policy_gradient(policy_jacobian(model.policy, parameters, data.observations), actions, advantages)
    every = slice(None, None, model.sub_sampling_factor)
    observations = index_observations(data.observations, every)
    damping = model.cg_damping
    fisher = make_fisher("gauss_newton", model.policy, parameters, observations, actions[every], damping)
    reference, _ = conjugate_gradient(fisher.damped_matvec, gradient, REFERENCE_STEPS, residual_tol=0)
    plain, plain_residual = conjugate_gradient(fisher.damped_matvec, gradient, 10, residual_tol=0)
    target = plain_residual.norm().item()

    def cosine(direction: th.Tensor) -> float:
        return (direction @ reference / (direction.norm() * reference.norm())).item()

    def curvature(direction: th.Tensor) -> float:
        return (direction @ fisher.damped_matvec(direction) / (direction @ direction)).item()

    def score(name: str, build: Callable[[], Solve | th.Tensor], precondition: bool = True) -> list[str]:
        start = time.perf_counter()
        built = build()
        seconds = time.perf_counter() - start
        direction = built if isinstance(built, th.Tensor) else built(gradient)
        steps = "-"
        if precondition and not isinstance(built, th.Tensor):
            reached = steps_to_residual(fisher.damped_matvec, gradient, built, target, PCG_LIMIT)
            steps = f"> {PCG_LIMIT}" if reached is None else str(reached)
        row = [name, f"{cosine(direction):.3f}", f"{curvature(direction):.3g}", steps, f"{seconds:.1f} s"]
        print(" | ".join(row), flush=True)
        return row

    def package_kfac(expectation: str = "sampled", scale: float = 1.0) -> kfac.KFACPreconditioner:
        return kfac.KFACPreconditioner(model.policy, parameters, observations, damping * scale, expectation=expectation)

    def every_row() -> kfac.KFACPreconditioner:
        kept, kfac.KFAC_MAX_ROWS = kfac.KFAC_MAX_ROWS, 2**40
        try:
            return package_kfac()
        finally:
            kfac.KFAC_MAX_ROWS = kept

    def block_diagonal() -> th.Tensor:
        direction = th.zeros_like(gradient)
        sizes = th.tensor([0] + [p.numel() for p in parameters]).cumsum(0)
        for layer in package_kfac().layers:
            mask = th.zeros_like(gradient)
            for position in (layer.weight_position, layer.bias_position):
                if position is not None:
                    mask[sizes[position] : sizes[position + 1]] = 1

            def block_matvec(vector: th.Tensor, mask: th.Tensor = mask) -> th.Tensor:
                return mask * fisher.damped_matvec(mask * vector)

            direction += conjugate_gradient(block_matvec, mask * gradient, BLOCK_STEPS, residual_tol=0).direction
        return direction

    def ekfac() -> EigenbasisPreconditioner:
        preconditioner = EigenbasisPreconditioner(package_kfac("exact"), damping)
        preconditioner.eigenvalues = ekfac_eigenvalues(model.policy, preconditioner, observations)  # type: ignore[arg-type]
        return preconditioner

    print("approximation | cosine | x'(F+dI)x/x'x | PCG steps | build")
    rows = [
        ["plain CG, 10 steps", f"{cosine(plain):.4f}", f"{curvature(plain):.3g}", "10", "-"],
        ["the gradient g itself", f"{cosine(gradient):.3f}", f"{curvature(gradient):.3g}", "-", "-"],
        score("K-FAC (the package's)", package_kfac),
        score("K-FAC, exact expectation over actions", lambda: package_kfac("exact")),
        score("K-FAC, every convolution row", every_row),
        score("K-FAC, damping x10", lambda: package_kfac(scale=10.0)),
        score("K-FAC eigenbasis, exact damping", lambda: EigenbasisPreconditioner(package_kfac("exact"), damping)),
        score("EKFAC (corrected eigenvalues)", ekfac),
        score("exact block-diagonal Fisher (60 CG steps per layer)", block_diagonal, precondition=False),
    ]
    source = f"the weights of `{repository_path(args.start_from)}`" if args.start_from else "a fresh initialisation (seed 0)"
    command = "python benchmarks/investigations/kfac_fit.py" + (
        f" --start-from {repository_path(args.start_from)}" if args.start_from else ""
    )
    lines = [
        f"# K-FAC's fit to a CNN policy's Fisher: {source}",
        "",
        f"Command: `{command} --output {args.output}`; {time.strftime('%Y-%m-%d')}; {machine_line()}.",
        "",
        f"One rollout of the `atari` entry on BreakoutNoFrameskip-v4, {len(actions)} states, the Fisher on "
        f"{len(observations)} of them, damping {damping}. Cosine to the natural gradient ({REFERENCE_STEPS} plain CG "
        f"steps); `x'(F+dI)x/x'x` of the natural gradient: {curvature(reference):.3g}; PCG steps: preconditioned CG "
        "products to reach the residual of 10 plain CG steps; build: wall seconds to make the approximation, on a "
        "machine shared with other runs (compare the rows of one record, not records).",
        "",
        *markdown_table(["approximation", "cosine", "x'(F+dI)x/x'x", "PCG steps", "build"], rows),
    ]
    folder = RESULTS / "kfac_fit"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
