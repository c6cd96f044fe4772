"""
Natural Policy Gradient (NPG): the algorithm.

One ``train()`` call: policy gradient ``g`` on the actor parameters, ``x ~ (F + damping I)^-1 g`` from
the Fisher machinery in :mod:`sb3_npg.fisher`, the step ``sqrt(2 target_kl / x^T F x) x`` (no line
search on the surrogate; with ``step_length="exact"`` the scale along ``x`` is searched until the measured KL
is ``target_kl``), the KL measured after the step, then the critic's regression on the returns.
"""

import contextlib
import copy
import io
import pathlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback, ProgressBarCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from sb3_npg.critic import fit_critic, index_observations
from sb3_npg.env_checks import FiniteCheck, NonFiniteError, with_finite_check
from sb3_npg.fisher import (
    FISHER_BACKENDS,
    action_distribution,
    add_to_parameters_,
    distribution_not_kept,
    distribution_outputs,
    has_running_statistics,
    make_fisher,
    mean_summed_kl,
    policy_gradient,
    policy_jacobian,
    search_step_scale,
    set_parameters_along_,
)
from sb3_npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_npg.rollout import LeanForward
from sb3_npg.rollout import collect_rollouts as lean_collect_rollouts
from sb3_npg.save_load import (
    UntrustedLoadError,
    atomic_save_file,
    check_saved_by_npg,
    check_state_dict,
    loads_recurrent_policies,
    optimizer_state_fits,
    read_parameters,
    read_save_file,
    require_safe_torch,
    trust_hint,
    trusted_load,
    untrusted_load_arguments,
)

SelfNPG = TypeVar("SelfNPG", bound="NPG")

#: How the step along the natural gradient is scaled (``step_length``)
STEP_LENGTHS = ("quadratic", "exact")
#: ``step_length="exact"``: the relative tolerance on the measured KL, and the budget of KL evaluations per update
EXACT_KL_TOLERANCE = 0.05
EXACT_MAX_KL_EVALUATIONS = 6
#: torch's intra-op thread count in ``learn()`` when ``num_threads`` is ``None``: NPG's tensors are small, and with
#: more threads each operation waits for every thread (measured in docs/performance.md, "Threads")
DEFAULT_NUM_THREADS = 1


NUM_THREADS_ALLOWED = f"must be None (default: {DEFAULT_NUM_THREADS} thread) or an int >= 1"


def valid_num_threads(num_threads: Any) -> bool:
    """Whether ``num_threads`` is a valid ``num_threads`` argument: ``None`` or an int >= 1 (not a bool)."""
    return num_threads is None or (isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1)


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """
    Run the block with ``num_threads`` torch intra-op threads, then give the caller's count back (also on an error).

    :param num_threads: the thread count inside the block (``torch.set_num_threads``)
    """
    previous = th.get_num_threads()
    if num_threads == previous:
        yield
        return
    th.set_num_threads(num_threads)
    try:
        yield
    finally:
        th.set_num_threads(previous)


def _with_progress_bar(callback: MaybeCallback, progress: ProgressBarCallback | None) -> MaybeCallback:
    """``callback`` with ``progress`` added (as SB3's ``learn(progress_bar=True)`` adds its own), or unchanged."""
    if progress is None:
        return callback
    if isinstance(callback, list):
        callback = CallbackList(callback)
    if not isinstance(callback, BaseCallback):
        callback = ConvertCallback(callback)
    return CallbackList([callback, progress])


class NPG(OnPolicyAlgorithm):
    """
    Natural Policy Gradient (NPG)

    Every update maximises the first-order gain ``g^T dtheta`` subject to
    ``E_s[KL(pi_old(.|s) || pi_new(.|s))] ~ target_kl`` (KL summed over action dimensions):
    ``dtheta = sqrt(2 target_kl / x^T F x) x`` with ``x ~ (F + cg_damping I)^-1 g``.
    Unlike TRPO there is no line search on the surrogate: by default the quadratic model of the KL is trusted;
    ``step_length="exact"`` rescales the step along ``x`` until the measured KL equals ``target_kl``.

    Paper: https://proceedings.neurips.cc/paper/2001/hash/4b86abe48d358ecf194c56c69108433e-Abstract.html
    (Kakade, "A Natural Policy Gradient", 2001); see also https://arxiv.org/abs/1703.02660

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the critic (value function), it can be a function
        of the current progress remaining (from 1 to 0). The actor has no learning rate: its step
        length is set by ``target_kl``.
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size for the critic's regression (above the rollout size ``n_steps * n_envs``,
        the whole rollout is one minibatch)
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param cg_max_steps: Maximum number of conjugate-gradient steps (Fisher-vector products) per update
    :param cg_damping: Damping ``lambda`` in ``(F + lambda I) x = g``; it regularises the solve only
    :param target_kl: The KL divergence ``epsilon`` each update aims at, summed over action dimensions
        and averaged over states. Values like 0.01 for discrete actions, larger (0.05-0.1) for
        multi-dimensional continuous actions.
    :param n_critic_updates: Number of epochs of critic regression per update
    :param normalize_advantage: Whether to normalize the advantages
    :param sub_sampling_factor: Use every ``sub_sampling_factor``-th sample of the rollout for the
        Fisher (the gradient uses all samples); see p40-42 of John Schulman's thesis
    :param fisher: The Fisher-vector product backend: ``"gauss_newton"`` (default, exact and fastest),
        ``"hessian"`` (double backprop of the KL, like TRPO) or ``"empirical"`` (outer products of the
        per-sample scores, the seed article's formula)
    :param damped_step_size: Normalise the step by ``x^T (F + lambda I) x`` instead of ``x^T F x``.
        This is TRPO's normalisation; it under-steps (measured 0.4-0.95 ``target_kl`` on HalfCheetah, closer to
        ``target_kl`` when the curvature is large against ``cg_damping``). The MuJoCo entries of ``npg.yml`` use it.
        With ``step_length="exact"`` it only changes the scale the search starts from.
    :param step_length: How the step along ``x`` is scaled: ``"quadratic"`` (default) takes the scale
        ``sqrt(2 target_kl / x^T F x)`` at which the quadratic model of the KL equals ``target_kl``; ``"exact"``
        starts there and searches the scale at which the KL measured on the batch is within 5 % of
        ``target_kl`` (secant in log-log space, bisection as a safeguard), with at most 6 forward passes of the
        actor per update (``"quadratic"`` makes one, to measure the KL). It never ends above ``1.05 target_kl``:
        without a scale inside the tolerance it keeps the largest one below (counted in
        ``train/kl_search_failures``), and without any it leaves the actor unchanged (a skipped update).
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param num_threads: The number of torch intra-op threads ``learn()`` runs with (rollouts, updates and the
        callbacks called during them); the caller's ``torch.get_num_threads()`` is restored when ``learn()``
        returns or raises. ``None`` (default): 1, as fast as more threads for SB3's small networks on an idle
        machine (about 20 % slower than 2 threads at 256x256) and 10x faster or more when other processes share
        the cores. Set it (e.g. to the number of cores) for large networks (``CnnPolicy``) on an otherwise idle
        machine. ``predict()`` runs with the caller's setting. Thread counts change float rounding only.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: ActorCriticPolicy
    #: The action spaces the algorithm takes (checked on the environment)
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Box,
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        target_kl: float = 0.01,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sub_sampling_factor: int = 1,
        fisher: str = "gauss_newton",
        damped_step_size: bool = False,
        step_length: str = "quadratic",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        num_threads: int | None = None,
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # no entropy bonus: the actor step is the natural gradient of the advantage objective
            vf_coef=0.0,  # the critic is fitted separately
            max_grad_norm=0.0,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=self.supported_action_spaces,
        )
        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.target_kl = target_kl
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        self.sub_sampling_factor = sub_sampling_factor
        self.fisher = fisher
        self.damped_step_size = damped_step_size
        self.step_length = step_length
        self.num_threads = num_threads
        self.skipped_updates = 0
        self.kl_search_failures = 0
        if self.env is not None:
            self.env = with_finite_check(self.env)
        self._check_hyperparameters()

        if _init_setup_model:
            self._setup_model()

    def _check_hyperparameters(self) -> None:
        """Raise ``ValueError`` naming the first argument outside its allowed range."""
        checks = [
            (
                "target_kl",
                isinstance(self.target_kl, int | float) and self.target_kl > 0,
                "must be a number > 0 (it is NPG's step length, the KL every update moves the policy by, not an early stop)",
            ),
            ("cg_max_steps", self.cg_max_steps >= 1, "must be >= 1"),
            ("cg_damping", self.cg_damping >= 0, "must be >= 0"),
            ("n_critic_updates", self.n_critic_updates >= 1, "must be >= 1"),
            ("sub_sampling_factor", self.sub_sampling_factor >= 1, "must be >= 1"),
            ("n_steps", self.n_steps >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "must be in [0, 1]"),
            ("fisher", self.fisher in FISHER_BACKENDS, f"must be one of {', '.join(map(repr, FISHER_BACKENDS))}"),
            ("step_length", self.step_length in STEP_LENGTHS, f"must be one of {', '.join(map(repr, STEP_LENGTHS))}"),
            ("num_threads", valid_num_threads(self.num_threads), NUM_THREADS_ALLOWED),
        ]
        if self.env is not None and self.normalize_advantage:
            buffer_size = self.n_steps * self.env.num_envs
            checks.append(("n_steps", buffer_size > 1, "n_steps * n_envs must be > 1 to normalize the advantages"))
        for name, valid, allowed in checks:
            if not valid:
                raise ValueError(f"Invalid {name}={getattr(self, name)!r}: {allowed}")
        if self.env is not None:
            self._warn_truncated_minibatch(self.n_steps * self.env.num_envs)

    def _warn_truncated_minibatch(self, buffer_size: int) -> None:
        """
        Warn, as SB3's PPO and sb3-contrib's TRPO do, when the rollout is not a multiple of ``batch_size``: the last
        critic minibatch of every epoch is then smaller. A ``batch_size`` above the rollout size is allowed (as in
        PPO, A2C and TRPO): the critic's minibatch is then the whole rollout.
        """
        if buffer_size % self.batch_size == 0:
            return
        if self.batch_size > buffer_size:
            consequence = f"the critic's minibatch is the whole rollout ({buffer_size} samples)"
        else:
            consequence = (
                f"after every {buffer_size // self.batch_size} untruncated mini-batches, "
                f"there will be a truncated mini-batch of size {buffer_size % self.batch_size}"
            )
        warnings.warn(
            f"You have specified a mini-batch size of {self.batch_size}, but because the rollout buffer is of size "
            f"`n_steps * n_envs = {buffer_size}`, {consequence}.\n"
            "We recommend using a `batch_size` that is a factor of `n_steps * n_envs`.\n"
            f"Info: (n_steps={self.n_steps} and n_envs={buffer_size // self.n_steps})",
            UserWarning,
            stacklevel=4,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_actor_critic()

    def _setup_actor_critic(self) -> None:
        """Split the policy into actor and critic parameters and give the critic its own optimiser."""
        self.actor_parameters, critic_parameters = self._split_parameters()
        # The critic optimiser holds the value parameters only: the actor (log_std and a shared features
        # extractor included) is moved by the natural-gradient step alone.
        optimizer_kwargs = dict(self.policy.optimizer_kwargs)
        if (
            self.policy.optimizer_class in (th.optim.Adam, th.optim.AdamW)
            and not {"fused", "foreach"} & optimizer_kwargs.keys()
        ):
            optimizer_kwargs["fused"] = True  # one kernel for all parameters: same update, less overhead
        self.policy.optimizer = self.policy.optimizer_class(  # type: ignore[call-arg]
            critic_parameters, lr=self.lr_schedule(1), **optimizer_kwargs
        )
        if self.policy.share_features_extractor and any(True for _ in self.policy.features_extractor.parameters()):
            warnings.warn(
                "NPG's critic does not train a shared features extractor (it is an actor parameter, moved by the "
                "natural-gradient step only), so the value function can only fit its head on the actor's features. "
                "Pass policy_kwargs=dict(share_features_extractor=False) to give the critic its own.",
                UserWarning,
                stacklevel=4,
            )

    def _split_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """
        Split the policy's parameters into actor (those the action distribution depends on) and critic (the rest).

        Found by differentiating the distribution on a sample observation, so it holds for custom
        policies too, whatever their parameter names. The policy runs in evaluation mode there (a ``BatchNorm``
        takes its running statistics, not one sample's, and keeps them; ``Dropout`` draws nothing) and does not keep
        the distribution of that pass (its autograd graph would make the policy impossible to deep-copy).
        """
        parameters = list(self.policy.parameters())
        training = self.policy.training
        self.policy.set_training_mode(False)
        try:
            with distribution_not_kept(self.policy):
                outputs = distribution_outputs(self._sample_distribution())
                gradients = th.autograd.grad([output.sum() for output in outputs], parameters, allow_unused=True)
        finally:
            self.policy.set_training_mode(training)
        actor = [p for p, grad in zip(parameters, gradients, strict=True) if grad is not None]
        critic = [p for p, grad in zip(parameters, gradients, strict=True) if grad is None]
        return actor, critic

    def _sample_distribution(self) -> Distribution:
        """The policy's action distribution on one sampled observation (how the actor parameters are found)."""
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
        return self.policy.get_distribution(observation)

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        Collect a rollout (see SB3's ``OnPolicyAlgorithm.collect_rollouts``): with the lean forward pass of
        :mod:`sb3_npg.rollout` for the policies it reproduces (same random draws; the same buffer bit for bit, or to
        float32 rounding for diagonal Gaussian MLPs), else SB3's.
        """
        forward = LeanForward.for_policy(self.policy)
        if forward is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return lean_collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, forward)

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        rollout_data = next(self.rollout_buffer.get(batch_size=None))
        observations = rollout_data.observations
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()

        self._policy_step(observations, actions, rollout_data.advantages, self._action_masks(rollout_data))
        value_loss = self._fit_critic(observations, rollout_data.returns)
        self._record_update(value_loss)

    def _record_update(self, value_loss: float) -> None:
        """Count the update and log the critic's fit and the policy's spread."""
        self._n_updates += 1
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/value_loss", value_loss)
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/skipped_updates", self.skipped_updates)

    def _action_masks(self, rollout_data: Any) -> th.Tensor | None:
        """The action masks stored with the samples of ``rollout_data`` (``None``: no masking; see MaskableNPG)."""
        return None

    def _policy_step(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        action_masks: th.Tensor | None = None,
        batch_policy: Any = None,
    ) -> None:
        """
        The natural-gradient step on the actor parameters, with its logs.

        The step itself runs in evaluation mode (see :meth:`_natural_gradient_step`). Then, in training mode, a policy
        with running statistics (``BatchNorm``) makes one forward pass of its actor over the batch, without gradients,
        which updates the statistics of the actor's layers once per update. The policy is left in training mode, for
        the critic's regression (as SB3's ``train()``), and does not keep the step's distributions.

        :param action_masks: the masks of the samples (maskable policies): the gradient, every Fisher product and
            the KL after the step use the distribution they mask, the same for the old and the new policy
        :param batch_policy: what gives the action distribution of the batch through
            ``get_distribution(observations, action_masks=...)``, one row per sample of ``actions``, for the gradient,
            every Fisher product and the KL after the step (default: the policy; see RecurrentNPG for sequences)
        """
        policy = self.policy if batch_policy is None else batch_policy
        with distribution_not_kept(self.policy):
            self.policy.set_training_mode(False)
            try:
                self._natural_gradient_step(observations, actions, advantages, action_masks, policy)
            finally:
                self.policy.set_training_mode(True)
            if has_running_statistics(self.policy):
                with th.no_grad():  # train mode: updates the running statistics of the actor's layers, once
                    action_distribution(policy, observations, action_masks)

    def _natural_gradient_step(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        action_masks: th.Tensor | None,
        policy: Any,
    ) -> None:
        """
        :meth:`_policy_step`'s natural-gradient step, the policy in evaluation mode: the gradient, every Fisher
        product and the KL after the step are those of the deterministic function that collected the rollout and acts
        in ``predict`` (``Dropout`` off, ``BatchNorm`` on its running statistics, which these passes do not change).

        :param policy: what gives the batch's distribution (see :meth:`_policy_step`)
        """
        if advantages.numel() > 1:  # their scale before normalisation, which the normalised step does not see
            self.logger.record("train/advantage_std", advantages.std().item())
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # One forward pass at theta_old gives the old distribution, the policy gradient and (without
        # sub-sampling) the Jacobian the Fisher products use
        jacobian = policy_jacobian(policy, self.actor_parameters, observations, action_masks)
        old = jacobian.distribution
        gradient = policy_gradient(jacobian, actions, advantages)

        fisher_index = slice(None, None, self.sub_sampling_factor)
        fisher = make_fisher(
            self.fisher,
            policy,
            self.actor_parameters,
            index_observations(observations, fisher_index),
            actions[fisher_index],
            self.cg_damping,
            jacobian=jacobian if self.sub_sampling_factor == 1 else None,
            action_masks=None if action_masks is None else action_masks[fisher_index],
        )
        del jacobian  # kept by the Fisher if it uses it, freed otherwise
        direction, residual = fisher.solve(gradient, self.cg_max_steps)
        damped_quadratic = direction @ (gradient - residual)  # x^T (F + lambda I) x
        quadratic = damped_quadratic if self.damped_step_size else damped_quadratic - self.cg_damping * direction @ direction
        del fisher  # frees its graph and caches before the step

        self.logger.record("train/policy_gradient_norm", gradient.norm().item())
        self.logger.record("train/cg_residual", residual.norm().item())
        self.logger.record("train/xFx", quadratic.item())
        step_size = th.sqrt(2 * self.target_kl / quadratic)
        if not (th.isfinite(quadratic) and quadratic > 0 and th.isfinite(step_size * direction).all()):
            self._skip_update(f"x^T F x = {quadratic.item():.3g} is not finite and positive")
            return

        previous = [parameter.detach().clone() for parameter in self.actor_parameters]
        if self.step_length == "exact":
            self._exact_step(observations, old, direction, previous, step_size.item(), action_masks, policy)
            return
        add_to_parameters_(self.actor_parameters, direction, alpha=step_size.item())
        with th.no_grad():
            kl = mean_summed_kl(old, action_distribution(policy, observations, action_masks))
        if not th.isfinite(kl):
            self._restore_actor(previous)
            self._skip_update(f"the KL after the step is {kl.item()}")
            return
        self.logger.record("train/step_size", step_size.item())
        self.logger.record("train/kl_divergence", kl.item())

    def _exact_step(
        self,
        observations: PyTorchObs,
        old: Distribution,
        direction: th.Tensor,
        previous: list[th.Tensor],
        initial_scale: float,
        action_masks: th.Tensor | None = None,
        batch_policy: Any = None,
    ) -> None:
        """
        ``step_length="exact"``: along ``direction``, the scale whose measured KL is ``target_kl`` within
        ``EXACT_KL_TOLERANCE``, searched from the quadratic estimate ``initial_scale`` (see
        :func:`~sb3_npg.fisher.search_step_scale`); every trial sets ``theta_old + scale * direction`` and
        measures the KL with one forward pass (of the distribution masked by ``action_masks``, if given). The actor
        ends at the chosen scale (``theta_old`` if none is safe).

        :param batch_policy: what gives the batch's distribution (see :meth:`_policy_step`; default: the policy)
        """

        policy = self.policy if batch_policy is None else batch_policy

        def kl_at(scale: float) -> float:
            set_parameters_along_(self.actor_parameters, previous, direction, scale)
            with th.no_grad():
                return mean_summed_kl(old, action_distribution(policy, observations, action_masks)).item()

        search = search_step_scale(kl_at, initial_scale, self.target_kl, EXACT_KL_TOLERANCE, EXACT_MAX_KL_EVALUATIONS)
        self.kl_search_failures += not search.converged
        self.logger.record("train/kl_evaluations", search.evaluations)
        self.logger.record("train/quadratic_kl_ratio", search.initial_kl / self.target_kl)
        self.logger.record("train/kl_search_failures", self.kl_search_failures)
        if search.scale == 0.0:
            self._restore_actor(previous)
            self._skip_update(
                f"no step scale in {search.evaluations} KL evaluations kept the KL below "
                f"{1 + EXACT_KL_TOLERANCE:g} target_kl (at the quadratic estimate: {search.initial_kl:.3g})"
            )
            return
        set_parameters_along_(self.actor_parameters, previous, direction, search.scale)
        self.logger.record("train/step_size", search.scale)
        self.logger.record("train/kl_divergence", search.kl)

    def _restore_actor(self, previous: list[th.Tensor]) -> None:
        """Set the actor parameters back to ``previous`` (their values before the step)."""
        with th.no_grad():
            for parameter, value in zip(self.actor_parameters, previous, strict=True):
                parameter.copy_(value)

    def _skip_update(self, reason: str) -> None:
        """Leave the actor unchanged, warn and count the skipped update."""
        self.skipped_updates += 1
        warnings.warn(f"NPG skipped the policy update {self._n_updates}: {reason}", RuntimeWarning, stacklevel=3)
        self.logger.record("train/step_size", 0.0)
        self.logger.record("train/kl_divergence", 0.0)

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor) -> float:
        """
        ``n_critic_updates`` epochs of minibatch regression of the value function on the returns
        (see :func:`sb3_npg.critic.fit_critic`).

        :return: the mean value loss
        """
        return fit_critic(self.policy, observations, returns, self.n_critic_updates, self.batch_size)

    @property
    def learn_threads(self) -> int:
        """The torch intra-op thread count ``learn()`` runs with: ``num_threads``, or 1 when it is ``None``."""
        return DEFAULT_NUM_THREADS if self.num_threads is None else self.num_threads

    def learn(
        self: SelfNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "NPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNPG:
        """
        Train; see SB3's ``OnPolicyAlgorithm.learn``.

        It runs with :attr:`learn_threads` torch threads and gives the caller's ``torch.get_num_threads()`` back
        when it returns or raises. An error raised by the environment reaches the caller unchanged and leaves the
        model ready for another ``learn`` (after ``set_env`` with a working environment); the progress bar is
        closed. A NaN or inf from the environment raises :class:`~sb3_npg.env_checks.NonFiniteError` naming the
        quantity and the timestep.
        """
        # The progress bar is created here, not by SB3, so that it can be closed when training fails
        progress = ProgressBarCallback() if progress_bar else None
        try:
            with torch_threads(self.learn_threads):
                return super().learn(
                    total_timesteps=total_timesteps,
                    callback=_with_progress_bar(callback, progress),
                    log_interval=log_interval,
                    tb_log_name=tb_log_name,
                    reset_num_timesteps=reset_num_timesteps,
                    progress_bar=False,
                )
        except BaseException as error:
            if isinstance(error, NonFiniteError):
                # num_timesteps counts the steps before the one that failed
                error.set_timestep(self.num_timesteps + (self.n_envs if error.during == "step" else 0))
            if progress is not None and getattr(progress, "pbar", None) is not None:
                progress.on_training_end()  # SB3 closes it only when training ends normally
            raise

    def set_env(self, env: GymEnv, force_reset: bool = True) -> None:
        """
        Set the environment to learn from (see SB3's ``BaseAlgorithm.set_env``), with NPG's NaN/inf check.

        :param env: the new environment (same spaces and number of environments)
        :param force_reset: reset the environment before the next ``learn``
        """
        super().set_env(env, force_reset=force_reset)
        self.env = with_finite_check(self.env)  # type: ignore[arg-type]

    def get_env(self) -> VecEnv | None:
        """
        The environment as given (see SB3's ``BaseAlgorithm.get_env``): the ``VecEnv`` itself when NPG's NaN/inf
        check sits on top of it (with wrappers such as ``VecNormalize``, the check sits below them, inside).
        """
        env = super().get_env()
        return env.venv if isinstance(env, FiniteCheck) else env

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfNPG],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = True,
        **kwargs: Any,
    ) -> SelfNPG:
        """
        Load a model saved with ``model.save(path)``; see SB3's ``BaseAlgorithm.load``.

        A missing file raises ``FileNotFoundError``; a file that is not a complete SB3 save (not a zip archive,
        truncated, or without its model data) or that another algorithm saved raises ``ValueError``, naming the
        path (for another algorithm's policy, use ``set_parameters``).

        :param trusted: ``True`` (SB3's behaviour): the file's pickled objects (spaces, schedules, classes) are
            unpickled, which runs whatever code the file holds: only for files you trust.
            ``False``: nothing is unpickled. The spaces come from ``env`` (required, or ``observation_space`` and
            ``action_space`` in ``custom_objects``), the policy class from ``policy_aliases``, pickled
            ``policy_kwargs`` from their readable copy (torch activations/optimisers and SB3's features
            extractors only; else pass ``custom_objects={"policy_kwargs": ...}``), the weights from
            ``torch.load(weights_only=True)``; other pickled entries keep the constructor's values. A file that
            cannot be read that way raises ``ValueError``. Refused (``ValueError``, before the file is read) on
            a torch below ``SAFE_TORCH_VERSION`` (2.10), whose ``weights_only`` unpickler has published
            advisories (see SECURITY.md).

        A save file over the limits of :mod:`sb3_npg.save_load` (member count and names, stated sizes,
        compression ratio) is refused before anything is decompressed; tensors that do not fit the policy raise
        ``ValueError`` naming the parameter.
        """
        if not valid_num_threads(kwargs.get("num_threads")):
            raise ValueError(f"Invalid num_threads={kwargs['num_threads']!r}: {NUM_THREADS_ALLOWED}")
        if not trusted:
            require_safe_torch(f"{cls.__name__}.load(path, trusted=False)", trusted_load(cls.__name__))
        save_file = read_save_file(path)
        check_saved_by_npg(save_file, cls.__name__, recurrent=loads_recurrent_policies(cls))
        if trusted:
            stream = save_file.stream()
        else:
            try:
                stream, custom_objects = untrusted_load_arguments(cls, save_file, env, device, custom_objects)
            except UntrustedLoadError as error:
                raise UntrustedLoadError(f"{str(error).rstrip('.')}. {trust_hint(cls.__name__)}") from error
        return super().load(
            stream,
            env=env,
            device=device,
            custom_objects=custom_objects,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model (SB3's format; ``.zip`` added to a path without suffix), see SB3's ``BaseAlgorithm.save``.

        A path is written atomically: a temporary file in the same folder, renamed over ``path`` once complete,
        so a save interrupted by an exception (or a crash) leaves the file that was there intact.
        """
        if isinstance(path, io.BufferedIOBase):
            super().save(path, exclude=exclude, include=include)
            return
        with atomic_save_file(path) as file:
            super().save(file, exclude=exclude, include=include)

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | dict[str, Any] | BaseAlgorithm,  # type: ignore[override]
        exact_match: bool = True,
        device: th.device | str = "auto",
        trusted: bool = False,
    ) -> None:
        """
        Load parameters from a save file, a dict (``get_parameters()``) or a model; see SB3's ``set_parameters``.

        Parameters from another algorithm (PPO, A2C, TRPO, ... with the same policy architecture) warm-start NPG:
        the policy weights are loaded, the optimiser state is not (NPG's critic optimiser holds the value
        parameters only) and a ``UserWarning`` says so. ``.pth`` members are read with ``weights_only=True``.
        Tensors that do not fit the model (shape, dtype, extra or missing keys with ``exact_match``) raise
        ``ValueError`` naming the parameter; on any error the model keeps the parameters it had.

        :param load_path_or_dict: a save file (path or binary file object), a dict of state dicts, or a model
        :param exact_match: the policy state dict must have exactly the policy's parameters
        :param device: where to load the tensors
        :param trusted: ``False``: a file is refused on a torch below ``SAFE_TORCH_VERSION`` (2.10), whose
            ``weights_only`` unpickler has published advisories (see SECURITY.md); ``True`` reads it there too (for
            a file you trust). Either way the file is read with ``weights_only=True``; dicts and models are not files.
        """
        if not trusted and not isinstance(load_path_or_dict, dict | BaseAlgorithm):
            require_safe_torch(
                f"{type(self).__name__}.set_parameters(path)", "pass trusted=True: model.set_parameters(path, trusted=True)"
            )
        params, algorithm = read_parameters(load_path_or_dict, device)
        objects = set(self._get_torch_save_params()[0])
        for name, state in params.items():
            if name not in objects:
                raise ValueError(f"'{name}' is not one of the model's parameter sets ({', '.join(sorted(objects))})")
            module = recursive_getattr(self, name)
            if isinstance(module, nn.Module):
                check_state_dict(name, state, module, exact_match)
        previous = {name: copy.deepcopy(recursive_getattr(self, name).state_dict()) for name in objects}
        try:
            self._load_parameters(params, algorithm, exact_match, device)
        except BaseException:
            for name, state in previous.items():
                recursive_getattr(self, name).load_state_dict(state)
            raise

    def _load_parameters(
        self, params: dict[str, Any], algorithm: str | None, exact_match: bool, device: th.device | str
    ) -> None:
        """Load checked parameters: all of them from NPG (or a dict) when the optimiser state fits, else the policy's."""
        optimizer_state = params.get("policy.optimizer")
        if algorithm in (None, "NPG") and (
            optimizer_state is None or optimizer_state_fits(optimizer_state, self.policy.optimizer)
        ):
            super().set_parameters(params, exact_match=exact_match, device=device)
            return
        if "policy" not in params:
            raise ValueError(f"No policy weights to load from {algorithm or 'these parameters'} (keys: {sorted(params)})")
        self.policy.load_state_dict(params["policy"], strict=exact_match)
        warnings.warn(
            f"Loaded the policy weights of {algorithm or 'another algorithm'} (its optimiser state does not fit NPG's, "
            "whose critic optimiser holds the value parameters only): NPG's optimiser keeps its own state.",
            UserWarning,
            stacklevel=3,
        )

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor_parameters"]
