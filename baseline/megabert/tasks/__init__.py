"""Fine-tuning: GLUE and users' own classification/regression tasks.

    task.py       TaskSpec (files, columns, labels, metrics) and user_task(); glue.py the eight GLUE tasks
    data.py       reads and checks a task's files (TSV/CSV/JSON lines) before anything trains
    tokenizer.py  the tokenizer recorded in a model dir, BERT sentence-pair framing
    recipe.py     per-task hyperparameters (configs/glue/*.json)
    finetune.py   one (task, seed) run; runner.py all runs (two rounds, one GPU each); results.py the tables
    metrics.py    GLUE's metrics in numpy
    worker.py     `python -m megabert.tasks.worker job.json`, the per-GPU subprocess

The command line is tools/run_glue.py.
"""
