"""``python -m flashsim`` (and ``torchrun -m flashsim``) run the ``flashsim`` command line."""

from flashsim.cli import main

if __name__ == "__main__":
    main(prog_name="flashsim")
