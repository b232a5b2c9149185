"""Sentiment analysis with a BERT-family encoder, in the transfer mode of your choice.

    accelerate launch recipes/sentiment.py --mode probe      # frozen encoder, fitted linear head
    accelerate launch recipes/sentiment.py --mode finetune   # every weight trains
    accelerate launch recipes/sentiment.py --mode scratch    # same architecture, random weights
    accelerate launch recipes/sentiment.py --mode lora       # LoRA adapters + head
    accelerate launch recipes/sentiment.py --mode finetune --gradual_unfreezing --layer_lr_decay 0.8 \
        --lr_scheduler_type stlr                             # ULMFiT-style transfer schedule
    accelerate launch recipes/sentiment.py --mode finetune --freeze_layers 4   # train only the top layers
    accelerate launch --multi_gpu --num_processes 2 recipes/sentiment.py --mode finetune   # 2 processes, CPU too
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml recipes/sentiment.py --mode finetune

Defaults come from configs/sentiment/<mode>.yaml (or --config FILE); flags override them. --help lists them all.
"""

import sys
from pathlib import Path

from xfer_nlp.cli import run_command

CONFIGS = Path(__file__).parent / "configs" / "sentiment"

if __name__ == "__main__":
    sys.exit(run_command(sys.argv[1:], default_config_dir=CONFIGS))
