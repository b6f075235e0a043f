"""`python train.py [experiment=<name>] [key=value | --key=value ...]`: the same as
`tbps train`. It exists for W&B sweeps created in the web UI, whose default command is
`${env} ${interpreter} ${program} ${args}` (program: train.py, args: --key=value)."""

import sys

from tbps.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
