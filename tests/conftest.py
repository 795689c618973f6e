import os

import torch

torch.set_num_threads(int(os.environ.get("HPC_FCN_TEST_THREADS", "2")))
