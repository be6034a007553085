"""On a GPU (skipped without CUDA): training tensors sit on the GPU in channels_last and bf16 where supported, and
four trials share one GPU at ``gpus_per_trial: 0.5`` with the teacher trained in a Ray worker."""

import pytest
import torch

from bench import gpu_check

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_training_tensors_sit_on_the_gpu():
    result = gpu_check.check_placement()
    assert result["batches"] > 0 and result["images_per_s"] > 0


@pytest.mark.slow
def test_four_trials_share_a_gpu_and_the_final_training_uses_nccl(tmp_path):
    search = gpu_check.check_search(tmp_path)
    final = gpu_check.check_final(search["winner"])
    assert final["backend"] == "nccl" and final["device"].startswith("cuda")
