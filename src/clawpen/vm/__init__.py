"""The VM tier: a bot in a QEMU guest (see :mod:`clawpen.vm.tier`)."""
