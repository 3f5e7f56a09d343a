"""Studies: is MosaicBERT better than BERT on this corpus at these budgets, and what does each modification buy?

    spec.py        the study file: variants x budgets, sweeps, the ablation's switches, evaluation, downstream task
    queue.py       the shared queue: one worker per GPU, runs claimed through lock files, stop with SIGTERM
    runner.py      a run's stages (pretrain with a wall-clock budget, evaluate, fine-tune), skipped when done
    evaluation.py  the study's masked-LM evaluation set (the same masked tokens for every variant) and scoring
    report.py      results.json, results.md, the Pareto figure and the ablation table
    plots.py       the Pareto frontier and the figures (shared with tools/plot_pareto.py)

Entry point: tools/run_study.py. Guide: docs/STUDY.md.
"""
