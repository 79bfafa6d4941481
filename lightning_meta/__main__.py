"""``python -m lightning_meta fit --config configs/maml_sinusoid.yaml``."""

from lightning_meta.cli import main

if __name__ == "__main__":
    main()
