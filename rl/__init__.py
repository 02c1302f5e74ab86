"""PPO on the accelerator with intrinsic rewards (RND, ICM, TeCLE) over gymnax environments.

Modules: `noise` (coloured Gaussian noise), `normalize` (running statistics and the
intrinsic-return filter), `gae` (advantages), `envs` and `wrappers` (MiniGrid and
MinAtar behind the gymnax API, Noisy TV, sticky actions), `networks`, `intrinsic`
(one interface for the intrinsic-reward modules) and `ppo` (`make_train`).
"""
