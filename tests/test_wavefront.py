import torch

from codec.mgcf.wavefront import group_map, kernel_offsets, num_steps, step_positions


def test_steps_cover_every_position_once():
    for p in (1, 2, 5, 8, 64):
        seen = torch.zeros(p, p, dtype=torch.int64)
        for g in range(num_steps(p, p)):
            rows, cols = step_positions(p, g)
            assert torch.all(2 * rows + cols == g)
            assert torch.all(rows[1:] > rows[:-1])
            seen[rows, cols] += 1
        assert torch.all(seen == 1)
        assert num_steps(p, p) == 3 * p - 2


def test_masks_follow_group_order():
    groups = group_map(9)
    for strict in (True, False):
        for dr, dc in kernel_offsets(7, strict):
            delta = int(groups[4 + dr, 4 + dc] - groups[4, 4])
            assert delta < 0 if strict else delta <= 0
    assert len(kernel_offsets(3, True)) == 4
    assert (0, 0) not in kernel_offsets(3, True)
    assert (0, 0) in kernel_offsets(7, False)
