import sys

from affvae.cli import main

sys.exit(main())
