"""A process that holds the writer lock of an output, as a running `wm` command would, until its stdin closes:
`python tests/lock_holder.py PATH [file]` prints "held" once it holds PATH (a folder; "file": a results file)."""

import sys

from world_modality.locks import writer_lock

if __name__ == "__main__":
    with writer_lock(sys.argv[1], folder=sys.argv[2:] != ["file"]):
        print("held", flush=True)
        sys.stdin.read()
