"""megabert: pretrain MosaicBERT encoders fast, from one GPU to many nodes."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="megabert",
    version="0.1.0",
    description="Fast MosaicBERT pretraining with fused Triton kernels, tensor parallelism and DeepSpeed ZeRO",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megabert", "megabert.*"]),
    py_modules=["pretrain_bert"],
    # The user commands, also runnable from a checkout as python tools/<name>.py.
    entry_points={"console_scripts": [
        "megabert-pretrain = pretrain_bert:console_main",
        "megabert-preprocess-data = megabert.cli.preprocess_data:main",
        "megabert-train-tokenizer = megabert.cli.train_tokenizer:main",
        "megabert-merge-datasets = megabert.cli.merge_datasets:main",
        "megabert-convert-checkpoint = megabert.cli.convert_checkpoint:main",
        "megabert-run-glue = megabert.cli.run_glue:main",
        "megabert-plot-pareto = megabert.cli.plot_pareto:main",
        "megabert-run-study = megabert.cli.run_study:main",
        "megabert-build-package-task = megabert.cli.build_package_task:main",
    ]},
    install_requires=[
        # torch is not upper-bounded: a user's CUDA build is kept. On a CPU-only machine install the CPU build
        # first (the README does: pip install torch==2.13.0 --index-url .../cpu or from a local wheel).
        "torch>=2.4",
        "numpy>=1.24",
        "deepspeed>=0.14",
        "tokenizers>=0.15",
        "sentencepiece>=0.1.99",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "tensorboard>=2.14",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "transformers>=4.40",  # the export's model code and the equivalence tests
            "sentence-transformers>=2.7",  # the export's sentence-transformers files
            "accelerate>=0.26",  # transformers' Trainer (the export fine-tunes in the HF ecosystem)
            "scikit-learn>=1.3",
            "scipy>=1.10",
            "matplotlib>=3.7",
            "megatron-core>=0.9",
            "triton>=3.0",
            "mpi4py>=3.1",
            "mpich>=4.1",
        ],
        "gpu": ["triton>=3.0"],
        "flash": ["flash-attn>=2.4"],  # optional attention backend (varlen with alibi_slopes since 2.4)
    },
)
