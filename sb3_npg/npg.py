"""
Natural Policy Gradient (NPG): the algorithm.

One ``train()`` call, read top to bottom in :meth:`NPG.train` like sb3-contrib TRPO's ``train()``: the policy
gradient ``g`` on the actor parameters (:mod:`sb3_npg.policy_gradient`), ``x ~ (F + damping I)^-1 g`` by conjugate
gradient on a Fisher operator (:mod:`sb3_npg.fisher`), ``x^T F x``, the step ``sqrt(2 target_kl / x^T F x) x`` (no
line search on the surrogate; with ``step_length="exact"`` the scale along ``x`` is searched until the measured KL is
``target_kl``, :mod:`sb3_npg.step_length`), the KL measured after the step (:mod:`sb3_npg.kl`), then the critic's
regression on the returns (:mod:`sb3_npg.critic`). MaskableNPG, RecurrentNPG and MaskableRecurrentNPG take the same
``train()`` with their own batch (:meth:`NPG._rollout_batch`, an :class:`UpdateBatch`).

``learn``, the NaN/inf environment check, ``save``, ``load`` and ``set_parameters`` are shared with MaskableNPG and
RecurrentNPG in :class:`sb3_npg.base.NPGBase`; the fast paths (same numbers) are in :mod:`sb3_npg.fast`.
"""

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.actor_critic import critic_optimizer, has_running_statistics, probe_observation, split_parameters
from sb3_npg.base import NPGBase
from sb3_npg.critic import fit_critic, index_observations, upcoming_get_order
from sb3_npg.fast.lean_forward import LeanForward
from sb3_npg.fast.rollout import collect_rollouts as lean_collect_rollouts
from sb3_npg.fisher import FisherOperator, make_fisher
from sb3_npg.hyperparameters import check_npg_hyperparameters
from sb3_npg.jacobian import PolicyJacobian
from sb3_npg.kfac import KFACPreconditioner, check_preconditioner, direction_cosine, make_preconditioner
from sb3_npg.kl import action_distribution, distribution_not_kept, mean_summed_kl
from sb3_npg.parameters import add_to_parameters_, set_parameters_along_
from sb3_npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from sb3_npg.step_length import search_step_scale

#: ``step_length="exact"``: the relative tolerance on the measured KL, and the budget of KL evaluations per update
EXACT_KL_TOLERANCE = 0.05
EXACT_MAX_KL_EVALUATIONS = 6


@dataclass
class UpdateBatch:
    """
    The samples of one update, as :meth:`NPG.train` reads them.

    :param observations: the observations (RecurrentNPG: the padded sequences)
    :param actions: the actions, one row per sample of the actor's step (``Discrete``: integers, flattened)
    :param advantages: their advantages, as the buffer holds them (not standardised)
    :param returns: the critic's regression targets, one per row of ``observations``
    :param policy: what gives the batch's action distribution through ``get_distribution(observations,
        action_masks=...)``, one row per sample of ``actions``, for the gradient, every Fisher product and the KL
        after the step: the policy, or RecurrentNPG's distribution along the stored sequences
    :param action_masks: the masks stored with the samples, one row per sample of ``actions`` (MaskableNPG;
        MaskableRecurrentNPG: of the real steps), used by every distribution of the step
    :param critic_rows: the buffer row of each sample, so that the critic's minibatches are the buffer's (``None``:
        the batch is in the buffer's order)
    """

    observations: PyTorchObs
    actions: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    policy: Any
    action_masks: th.Tensor | None = None
    critic_rows: np.ndarray | None = None


class SkippedUpdate(Exception):
    """
    Raised inside :meth:`NPG._actor_step` when the actor's step cannot be taken (a non-finite or non-positive
    ``x^T F x``, a non-finite KL, no safe scale, a ``target_kl`` below 0): the actor stays at ``theta_old``, the
    update is counted in ``skipped_updates`` and a ``RuntimeWarning`` says why; the critic is still fitted.
    """


class NPG(NPGBase):
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
        multi-dimensional continuous actions. It can be a function of the current progress remaining
        (from 1 to 0; a last rollout that runs past the total steps counts as 0), like ``learning_rate``: > 0 at
        the start, >= 0 at the end (an update whose value is 0 leaves the actor where it is).
    :param n_critic_updates: Number of epochs of critic regression per update
    :param normalize_advantage: Whether to normalize the advantages
    :param sub_sampling_factor: Use every ``sub_sampling_factor``-th sample of the rollout for the
        Fisher (the gradient uses all samples); see p40-42 of John Schulman's thesis
    :param fisher: The Fisher-vector product backend: ``"gauss_newton"`` (default, exact and fastest),
        ``"hessian"`` (double backprop of the KL, like TRPO) or ``"empirical"`` (outer products of the
        per-sample scores, the seed article's formula)
    :param preconditioner: The conjugate-gradient preconditioner: ``None`` (default, plain CG) or ``"kfac"``, the
        Kronecker-factored approximation of the policy's Fisher (:mod:`sb3_npg.kfac`), built once per update from
        the Fisher's batch: the same solution in fewer Fisher products. With ``cg_max_steps=1`` the direction is the
        K-FAC solve itself (ACKTR's step), its length still set by the exact ``x^T F x`` from that one product.
        ``"kfac"`` covers ``nn.Linear`` and ``nn.Conv2d`` layers and a Gaussian ``log_std`` (a ``ValueError``
        names any other actor layer at construction).
    :param log_direction_cosine: Also solve each update's system to convergence (preconditioned CG, up to 50
        products, not used for the step) and log the cosine of the step's direction to that solution as
        ``train/direction_cosine``: a diagnostic of how far a short or K-FAC solve is from the natural gradient.
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
        returns or raises. ``None`` (default): 1, the fastest for SB3-sized networks on an idle machine and much
        faster when other processes share the cores; only the batch products of large MLP heads (256x256 and up,
        on a batch of thousands of samples or the critic's minibatches) run at the caller's count when timed faster
        (:mod:`sb3_npg.fast.threads`), which makes two seeded runs with such a network differ by float rounding;
        SB3-sized networks are unaffected. An int: that many threads for everything, and a seeded run is
        bit-reproducible (``num_threads=1`` for large networks too). Set it (e.g. to the number of cores) for
        other large networks (``CnnPolicy``) on an otherwise idle machine. ``predict()`` runs with the caller's
        setting.
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
        target_kl: float | Schedule = 0.01,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sub_sampling_factor: int = 1,
        fisher: str = "gauss_newton",
        preconditioner: str | None = None,
        log_direction_cosine: bool = False,
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
        self.preconditioner = preconditioner
        self.log_direction_cosine = log_direction_cosine
        self.damped_step_size = damped_step_size
        self.step_length = step_length
        self.num_threads = num_threads
        self.skipped_updates = 0
        self.kl_search_failures = 0
        self._add_finite_check()
        self._check_hyperparameters()

        if _init_setup_model:
            self._setup_model()

    def _check_hyperparameters(self) -> None:
        """Raise ``ValueError`` naming the first argument outside its allowed range (:mod:`sb3_npg.hyperparameters`)."""
        n_envs = None if self.env is None else self.env.num_envs
        check_npg_hyperparameters(vars(self), n_envs, self.normalize_advantage)
        if n_envs is not None:
            self._warn_truncated_minibatch(self.n_steps * n_envs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_actor_critic()

    def _setup_actor_critic(self) -> None:
        """Split the policy into actor and critic parameters and give the critic its own optimiser."""
        self.actor_parameters, critic_parameters = split_parameters(self.policy, self._sample_distribution)
        check_preconditioner(self.preconditioner, self.policy, self.actor_parameters)  # K-FAC covers every layer
        # The critic optimiser holds the value parameters only: the actor (log_std and a shared features
        # extractor included) is moved by the natural-gradient step alone.
        self.policy.optimizer = critic_optimizer(self.policy, critic_parameters, self.lr_schedule(1))
        if self.policy.share_features_extractor and any(True for _ in self.policy.features_extractor.parameters()):
            warnings.warn(
                "NPG's critic does not train a shared features extractor (it is an actor parameter, moved by the "
                "natural-gradient step only), so the value function can only fit its head on the actor's features. "
                "Pass policy_kwargs=dict(share_features_extractor=False) to give the critic its own.",
                UserWarning,
                stacklevel=4,
            )

    def _sample_distribution(self) -> Distribution:
        """The policy's action distribution on one sampled observation (how the actor parameters are found)."""
        observation, _ = self.policy.obs_to_tensor(probe_observation(self.observation_space))
        return self.policy.get_distribution(observation)

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        Collect a rollout (see SB3's ``OnPolicyAlgorithm.collect_rollouts``): with the lean forward pass of
        :mod:`sb3_npg.fast.rollout` for the policies it reproduces (same random draws; the same buffer bit for bit, or to
        float32 rounding for diagonal Gaussian MLPs), else SB3's.
        """
        forward = LeanForward.for_policy(self.policy)
        if forward is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return lean_collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, forward)

    def train(self) -> None:
        """
        One update on the rollout buffer, the article's steps from top to bottom: the natural-gradient step on the
        actor (1-6), then the critic's regression (7).

        MaskableNPG, RecurrentNPG and MaskableRecurrentNPG take this same update: what differs is their batch
        (:meth:`_rollout_batch`: the masks stored with the samples; the distribution along the stored sequences; both)
        and the recurrent variants' critic minibatches (:meth:`_fit_critic`).
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        batch = self._rollout_batch()
        target_kl = self._current_target_kl()
        self.logger.record("train/target_kl", target_kl)

        with self._actor_step(batch) as theta_old:  # evaluation mode; a SkippedUpdate leaves the actor at theta_old
            if not (math.isfinite(target_kl) and target_kl >= 0):
                raise SkippedUpdate(f"target_kl is {target_kl} (its schedule must give a number >= 0)")
            advantages = self._normalize_advantages(batch.advantages)
            # 1. Gradient g at theta_old: one forward pass gives the old distribution, g and the Jacobian that the
            # Fisher products reuse (sb3_npg.policy_gradient)
            jacobian = policy_jacobian(batch.policy, self.actor_parameters, batch.observations, batch.action_masks)
            old, gradient = jacobian.distribution, policy_gradient(jacobian, batch.actions, advantages)
            # 2. Solve (F + lambda I) x = g by conjugate gradient on the Fisher operator of the backend `fisher`,
            # preconditioned by K-FAC's factors with preconditioner="kfac" (sb3_npg.kfac)
            fisher_operator = self._fisher_operator(batch, jacobian)
            del jacobian  # kept by the operator if it uses it, freed otherwise
            preconditioner = self._preconditioner(batch)
            direction, residual = fisher_operator.solve(gradient, self.cg_max_steps, preconditioner)
            if self.log_direction_cosine:
                cosine = direction_cosine(fisher_operator, gradient, direction, preconditioner)
                self.logger.record("train/direction_cosine", cosine)
            del fisher_operator  # frees its graph and caches before the step
            # 3. Quadratic form x^T F x, from the solve's residual (x^T (F + lambda I) x with damped_step_size)
            quadratic = self._quadratic_form(gradient, direction, residual)
            # 4. Scale sqrt(2 target_kl / x^T F x): the quadratic model of the KL equals target_kl
            scale = self._step_scale(target_kl, quadratic, direction)
            if self.step_length == "exact" and target_kl > 0:
                # 5.-6. The scale searched until the KL measured after the step is target_kl (sb3_npg.step_length)
                scale, kl = self._exact_step(batch, old, direction, theta_old, scale, target_kl)
            else:
                # 5. Apply theta = theta_old + scale x
                add_to_parameters_(self.actor_parameters, direction, alpha=scale)
                # 6. Measured KL(pi_old || pi_new) on the batch
                kl = self._measured_kl(batch, old)
            self.logger.record("train/step_size", scale)
            self.logger.record("train/kl_divergence", kl)
        # 7. Critic: n_critic_updates epochs of regression on the returns (sb3_npg.critic)
        value_loss = self._fit_critic(batch.observations, batch.returns, batch.critic_rows)
        self._record_update(value_loss)

    def _rollout_batch(self) -> UpdateBatch:
        """The rollout buffer as one batch: all its samples, the masks :meth:`_action_masks` gives, the policy."""
        critic_rows = upcoming_get_order(self.rollout_buffer)  # the buffer's shuffle, for the critic's minibatches
        rollout_data = next(self.rollout_buffer.get(batch_size=None))
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        return UpdateBatch(
            observations=rollout_data.observations,
            actions=actions,
            advantages=rollout_data.advantages,
            returns=rollout_data.returns,
            policy=self.policy,
            action_masks=self._action_masks(rollout_data),
            critic_rows=critic_rows,
        )

    def _action_masks(self, rollout_data: Any) -> th.Tensor | None:
        """
        The action masks stored with the samples of ``rollout_data`` (``None``: no masking; see MaskableNPG and
        MaskableRecurrentNPG), which :meth:`_rollout_batch` puts in the batch.
        """
        return None

    @contextlib.contextmanager
    def _actor_step(self, batch: UpdateBatch) -> Iterator[list[th.Tensor]]:
        """
        Where :meth:`train`'s steps 1-6 run: in evaluation mode, so that the gradient, every Fisher product and the KL
        after the step are those of the deterministic function that collected the rollout and acts in ``predict``
        (``Dropout`` off, ``BatchNorm`` on its running statistics, which these passes do not change); the policy does
        not keep their distributions.

        A :class:`SkippedUpdate` raised inside puts the actor back to ``theta_old``, warns (``RuntimeWarning``) and is
        counted in ``skipped_updates``. Then, in training mode, a policy with running statistics (``BatchNorm``) makes
        one forward pass of its actor over the batch, without gradients, which updates the statistics of the actor's
        layers once per update. The policy is left in training mode, for the critic's regression (as SB3's
        ``train()``).

        :param batch: the update's batch
        :return: (as the ``with`` target) ``theta_old``, copies of the actor parameters before the step
        """
        theta_old = [parameter.detach().clone() for parameter in self.actor_parameters]
        with distribution_not_kept(self.policy):
            self.policy.set_training_mode(False)
            try:
                yield theta_old
            except SkippedUpdate as skipped:
                self._restore_actor(theta_old)
                self.skipped_updates += 1
                warnings.warn(f"NPG skipped the policy update {self._n_updates}: {skipped}", RuntimeWarning, stacklevel=3)
                self.logger.record("train/step_size", 0.0)
                self.logger.record("train/kl_divergence", 0.0)
            finally:
                self.policy.set_training_mode(True)
            if has_running_statistics(self.policy):
                with th.no_grad():  # train mode: updates the running statistics of the actor's layers, once
                    action_distribution(batch.policy, batch.observations, batch.action_masks)

    def _normalize_advantages(self, advantages: th.Tensor) -> th.Tensor:
        """The advantages standardised (with ``normalize_advantage``), their spread before it logged."""
        if advantages.numel() > 1:  # their scale before normalisation, which the normalised step does not see
            self.logger.record("train/advantage_std", advantages.std().item())
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def _fisher_operator(self, batch: UpdateBatch, jacobian: PolicyJacobian) -> FisherOperator:
        """
        Step 2's Fisher operator of the backend ``fisher`` (:func:`~sb3_npg.fisher.make_fisher`) on every
        ``sub_sampling_factor``-th sample of the batch, at ``theta_old``.

        :param jacobian: step 1's Jacobian on the whole batch, reused without sub-sampling
        """
        every = slice(None, None, self.sub_sampling_factor)
        return make_fisher(
            self.fisher,
            batch.policy,
            self.actor_parameters,
            index_observations(batch.observations, every),
            batch.actions[every],
            self.cg_damping,
            jacobian=jacobian if self.sub_sampling_factor == 1 else None,
            action_masks=None if batch.action_masks is None else batch.action_masks[every],
        )

    def _preconditioner(self, batch: UpdateBatch) -> KFACPreconditioner | None:
        """
        Step 2's preconditioner (``preconditioner="kfac"``: K-FAC's factors on the Fisher's samples, see
        :func:`~sb3_npg.kfac.make_preconditioner`; ``None``: plain conjugate gradient).
        """
        every = slice(None, None, self.sub_sampling_factor)
        return make_preconditioner(
            self.preconditioner,
            self.policy,
            self.actor_parameters,
            index_observations(batch.observations, every),
            self.cg_damping,
            None if batch.action_masks is None else batch.action_masks[every],
            batch.policy,
        )

    def _quadratic_form(self, gradient: th.Tensor, direction: th.Tensor, residual: th.Tensor) -> th.Tensor:
        """
        Step 3: ``x^T F x`` from the solve's residual ``r = g - (F + lambda I) x``, without another product
        (``x^T (F + lambda I) x`` with ``damped_step_size``); logged with ``|g|`` and ``|r|``.
        """
        damped_quadratic = direction @ (gradient - residual)  # x^T (F + lambda I) x
        quadratic = damped_quadratic if self.damped_step_size else damped_quadratic - self.cg_damping * direction @ direction
        self.logger.record("train/policy_gradient_norm", gradient.norm().item())
        self.logger.record("train/cg_residual", residual.norm().item())
        self.logger.record("train/xFx", quadratic.item())
        return quadratic

    def _step_scale(self, target_kl: float, quadratic: th.Tensor, direction: th.Tensor) -> float:
        """
        Step 4: ``sqrt(2 target_kl / x^T F x)``, the scale at which the quadratic model of the KL equals ``target_kl``.

        :raises SkippedUpdate: ``x^T F x`` is not finite and positive (or the step it gives is not finite)
        """
        scale = th.sqrt(2 * target_kl / quadratic)
        if not (th.isfinite(quadratic) and quadratic > 0 and th.isfinite(scale * direction).all()):
            raise SkippedUpdate(f"x^T F x = {quadratic.item():.3g} is not finite and positive")
        return scale.item()

    def _measured_kl(self, batch: UpdateBatch, old: Distribution) -> float:
        """
        Step 6: ``KL(pi_old || pi_new)``, summed over action dimensions and averaged over the batch, after the step.

        :raises SkippedUpdate: the KL is not finite
        """
        with th.no_grad():
            kl = mean_summed_kl(old, action_distribution(batch.policy, batch.observations, batch.action_masks))
        if not th.isfinite(kl):
            raise SkippedUpdate(f"the KL after the step is {kl.item()}")
        return kl.item()

    def _exact_step(
        self,
        batch: UpdateBatch,
        old: Distribution,
        direction: th.Tensor,
        theta_old: list[th.Tensor],
        initial_scale: float,
        target_kl: float,
    ) -> tuple[float, float]:
        """
        Steps 5-6 with ``step_length="exact"``: along ``direction``, the scale whose measured KL is ``target_kl``
        within ``EXACT_KL_TOLERANCE``, searched from the quadratic estimate ``initial_scale`` (see
        :func:`~sb3_npg.step_length.search_step_scale`); every trial sets ``theta_old + scale * direction`` and
        measures the KL with one forward pass. The actor ends at the chosen scale.

        :param target_kl: this update's ``target_kl`` (> 0)
        :return: the chosen scale and the KL measured there
        :raises SkippedUpdate: no scale kept the KL below ``(1 + EXACT_KL_TOLERANCE) target_kl``
        """

        def kl_at(scale: float) -> float:
            set_parameters_along_(self.actor_parameters, theta_old, direction, scale)
            with th.no_grad():
                return mean_summed_kl(old, action_distribution(batch.policy, batch.observations, batch.action_masks)).item()

        search = search_step_scale(kl_at, initial_scale, target_kl, EXACT_KL_TOLERANCE, EXACT_MAX_KL_EVALUATIONS)
        self.kl_search_failures += not search.converged
        self.logger.record("train/kl_evaluations", search.evaluations)
        self.logger.record("train/quadratic_kl_ratio", search.initial_kl / target_kl)
        self.logger.record("train/kl_search_failures", self.kl_search_failures)
        if search.scale == 0.0:
            raise SkippedUpdate(
                f"no step scale in {search.evaluations} KL evaluations kept the KL below "
                f"{1 + EXACT_KL_TOLERANCE:g} target_kl (at the quadratic estimate: {search.initial_kl:.3g})"
            )
        set_parameters_along_(self.actor_parameters, theta_old, direction, search.scale)
        return search.scale, search.kl

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

    def _current_target_kl(self) -> float:
        """
        This update's ``target_kl``: the number, or the schedule's value at the current progress remaining, taken in
        [0, 1]: SB3's progress remaining falls below 0 when the last rollout runs past ``total_timesteps`` (1e6 steps
        in rollouts of 4096 end at 1003520), where a linear schedule would give a negative KL and skip the update.
        """
        if not callable(self.target_kl):
            return float(self.target_kl)
        return float(self.target_kl(min(max(self._current_progress_remaining, 0.0), 1.0)))

    def _restore_actor(self, theta_old: list[th.Tensor]) -> None:
        """Set the actor parameters back to ``theta_old`` (their values before the step)."""
        with th.no_grad():
            for parameter, value in zip(self.actor_parameters, theta_old, strict=True):
                parameter.copy_(value)

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor, batch_rows: np.ndarray | None = None) -> float:
        """
        ``n_critic_updates`` epochs of minibatch regression of the value function on the returns, on the minibatches
        ``RolloutBuffer.get(batch_size)`` would yield (see :func:`sb3_npg.critic.fit_critic`).

        :param batch_rows: the buffer row of each row of the batch (``None``: the buffer's order)
        :return: the mean value loss
        """
        return fit_critic(self.policy, observations, returns, self.n_critic_updates, self.batch_size, batch_rows)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor_parameters"]
