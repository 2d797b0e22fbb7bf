"""harl: object-aware self-supervised pretraining (HARL, HAPiCL, saliency-guided masking) on a
solo-learn-compatible core."""

from setuptools import find_packages, setup

setup(
    name="harl",
    version="0.1.0",
    description="Object-aware self-supervised visual pretraining: HARL, HAPiCL, saliency-guided masking, "
                "BYOL / SimCLR / MoCo v2+ on a solo-learn-compatible core",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["harl", "harl.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch 2.14.1 / torchvision 0.29.1 are what this project pins for its own installs
        # (scripts/install.sh); the code also runs on torch 2.11 / torchvision 0.26.
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "lightning>=2.2,<3",
        "torchmetrics>=1.0",
        "timm>=1.0",
        "omegaconf>=2.3,<2.4",
        "hydra-core>=1.3,<1.4",
        "wandb>=0.16",
        "scikit-image>=0.22",
        "scipy>=1.10",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "rich>=13",
        "matplotlib>=3.7",
        "pyyaml>=6",
        "pillow>=9",
        "numpy>=1.24",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "harl-pretrain=harl.cli.pretrain:main",
            "harl-linear=harl.cli.linear:main",
            "harl-masks=harl.cli.masks:main",
            "harl-scenes=harl.cli.scenes:main",
            "harl-finetune=harl.cli.finetune:main",
            "harl-transfer=harl.cli.transfer:main",
            "harl-report=harl.cli.report:main",
            "harl-zoo=harl.cli.zoo:main",
        ]
    },
)
