"""
K-FAC libraries, part 2 (a separate environment with ``curvlinops-for-pytorch`` and ``nngeometry``): the K-FAC
direction of the exported policy's Fisher (see ``export_policy.py``) by each library, its time and its cosine to
the natural gradient, printed as one JSON line.

The policy's Fisher is written as each library's regression loss: a diagonal Gaussian's Fisher in its mean is
``J^T J / sigma^2``, the Gauss-Newton matrix of a squared error on the outputs divided by ``sigma`` (curvlinops'
``MSELoss`` averages over the batch and the ``d`` outputs, hence the extra ``sqrt(d / 2)``; nngeometry's
``"regression"`` variant is the unit Gaussian's Fisher). ``log_std`` gets its exact block ``2 I`` as in sb3_npg.
Also printed: the relative difference of curvlinops' undamped K-FAC product to the product with sb3_npg's exported
factors (exact expectation), on a random vector.

Usage::

    /path/to/other/venv/bin/python benchmarks/investigations/kfac_libraries/libraries.py --width 64
"""

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import torch as th
from torch import nn

FOLDER = pathlib.Path(tempfile.gettempdir()) / "kfac_libraries"
MEAN_LAYERS = ("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2", "action_net")


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


class Scaled(nn.Module):
    """The actor's mean times a fixed per-dimension scale."""

    def __init__(self, actor: nn.Module, scale: th.Tensor):
        super().__init__()
        self.actor = actor
        self.register_buffer("scale", scale)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.actor(x) * self.scale


def main(width: int, repeats: int = 5) -> None:
    exported = th.load(FOLDER / f"export_{width}.pt")
    names, params = exported["names"], exported["params"]
    by_name = dict(zip(names, params, strict=True))
    obs, gradient, natural, damping, std = (exported[key] for key in ("obs", "g", "exact", "lam", "std"))
    n_actions = std.numel()
    actor = nn.Sequential(
        nn.Linear(obs.shape[1], width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, n_actions)
    )
    layers = [actor[0], actor[2], actor[4]]
    with th.no_grad():
        for layer, prefix in zip(layers, MEAN_LAYERS, strict=True):
            layer.weight.copy_(by_name[f"{prefix}.weight"])
            layer.bias.copy_(by_name[f"{prefix}.bias"])
    mean_params = [p for layer in layers for p in (layer.weight, layer.bias)]
    order = [names.index(f"{prefix}.{kind}") for prefix in MEAN_LAYERS for kind in ("weight", "bias")]
    chunks = list(gradient.split([p.numel() for p in params]))
    mean_gradient = th.cat([chunks[i].reshape(-1) for i in order])

    def full(mean_direction: th.Tensor) -> th.Tensor:
        """A library's direction on the mean layers, with log_std's exact block, in sb3_npg's order."""
        parts: list[th.Tensor] = list(chunks)
        for i, part in zip(order, mean_direction.split([p.numel() for p in mean_params]), strict=True):
            parts[i] = part
        log_std = names.index("log_std")
        parts[log_std] = chunks[log_std] / (2 + damping)
        return th.cat([part.reshape(-1) for part in parts])

    def timed(solve) -> dict[str, float]:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            direction = solve()
            times.append(time.perf_counter() - start)
        return dict(ms=1000 * statistics.median(times), cosine=cosine(full(direction), natural))

    results: dict[str, object] = {}
    from curvlinops import KFACInverseLinearOperator, KFACLinearOperator

    model = Scaled(actor, (n_actions / 2) ** 0.5 / std)
    data = [(obs, th.zeros(obs.shape[0], n_actions))]

    def curvlinops_operator(fisher_type: str) -> KFACLinearOperator:
        return KFACLinearOperator(model, nn.MSELoss(), mean_params, data, fisher_type=fisher_type,
                                  separate_weight_and_bias=False, check_deterministic=False)  # fmt: skip

    def curvlinops_solve(fisher_type: str) -> th.Tensor:
        inverse = KFACInverseLinearOperator(curvlinops_operator(fisher_type), damping=damping, use_heuristic_damping=True)
        return inverse @ mean_gradient

    results["curvlinops type-2"] = timed(lambda: curvlinops_solve("type-2"))
    results["curvlinops mc"] = timed(lambda: curvlinops_solve("mc"))
    vector = th.randn(mean_gradient.numel(), generator=th.Generator().manual_seed(0))
    theirs = curvlinops_operator("type-2") @ vector
    ours, start = [], 0
    for (a_factor, g_factor), layer in zip(exported["factors"], layers, strict=True):
        rows, columns = layer.weight.shape
        block = vector[start : start + rows * (columns + 1)]
        matrix = th.cat([block[: rows * columns].reshape(rows, columns), block[rows * columns :, None]], dim=1)
        product = g_factor @ matrix @ a_factor
        ours += [product[:, :columns].reshape(-1), product[:, columns]]
        start += rows * (columns + 1)
    results["curvlinops product vs sb3_npg factors (relative difference)"] = (
        (theirs - th.cat(ours)).norm() / th.cat(ours).norm()
    ).item()

    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatKFAC
    from nngeometry.object.vector import PVector

    unit = nn.Sequential(actor, Scaled(nn.Identity(), 1 / std))
    loader = th.utils.data.DataLoader(th.utils.data.TensorDataset(*data[0]), batch_size=obs.shape[0])

    def nngeometry_solve() -> th.Tensor:
        fisher = FIM(model=unit, loader=loader, representation=PMatKFAC, variant="regression", device="cpu")
        return fisher.solvePVec(PVector(LayerCollection.from_model(unit), vector_repr=mean_gradient), regul=damping).to_torch()

    results["nngeometry"] = timed(nngeometry_solve)
    print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    th.set_num_threads(1)
    main(args.width)
