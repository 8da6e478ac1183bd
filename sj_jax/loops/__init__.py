"""Above the trainer: what runs models over data. Tournament self-rejection (`tournament`), policy and
judge accuracy on task rows (`evaluate`, the `eval-tasks` command in `eval_tasks`), the model's own
wrong answers as pairs (`own_samples`); the SELF-JUDGE loop comes next. The task suite (`sj_jax.tasks`)
stays data: it imports neither the sampler nor the judge."""
