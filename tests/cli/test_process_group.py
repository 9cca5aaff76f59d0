"""A command run under ``torchrun`` destroys its process group before it returns (left to interpreter shutdown,
gloo's worker threads can abort a process whose run succeeded)."""

import torch.distributed as dist

from smoa.cli.main import main


def test_the_command_destroys_the_process_group(tmp_path, capsys):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["methods", "--methods", "lora"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
