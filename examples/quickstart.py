"""Train the SRFT preset for two steps on the built-in task, then evaluate the trained model."""

from srft import evaluate, load_config, train

tiny = {"run.steps": 2, "rollout.prompts_per_step": 2, "rollout.n": 2, "data.train_size": 16, "data.test_size": 8,
        "run.eval_k": 2, "run.eval_every": 0, "run.progress": False, "run.plots": False,
        "run.out_dir": "runs/quickstart-{time}"}
run_dir = train(load_config("srft", overrides=tiny))
figures = evaluate(load_config("srft", overrides={**tiny, "model.path": str(run_dir / "model")}))
k = figures["k"]
for split, res in figures["splits"].items():
    print(f"{split}: avg@{k} {res[f'avg@{k}']:.3f}, pass@{k} {res[f'pass@{k}']:.3f}")
