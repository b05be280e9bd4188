import torch

from xmodal.models.staging import StagingBuffer


def _images(count: int, size: int = 8) -> list[torch.Tensor]:
    return [torch.full((3, size, size), float(i)) for i in range(count)]


def test_batches_reuse_one_buffer_and_a_smaller_last_batch_is_a_view_of_it():
    staging = StagingBuffer("cpu")
    first = staging.stack(_images(4))
    storage = first.untyped_storage().data_ptr()
    second = staging.stack(_images(4))
    last = staging.stack(_images(3))
    assert staging.allocations == 1
    assert second.untyped_storage().data_ptr() == last.untyped_storage().data_ptr() == storage
    assert last.shape == (3, 3, 8, 8)
    assert [float(image[0, 0, 0]) for image in last] == [0.0, 1.0, 2.0]
    assert not staging.pinned  # no CUDA here: a plain tensor, same code


def test_a_larger_batch_or_another_shape_allocates_anew():
    staging = StagingBuffer("cpu")
    staging.stack(_images(2))
    assert staging.stack(_images(5)).shape == (5, 3, 8, 8)
    assert staging.stack(_images(2, size=16)).shape == (2, 3, 16, 16)
    assert staging.allocations == 3


def test_pinned_only_for_a_cuda_device_on_a_machine_with_cuda():
    assert StagingBuffer("cuda").pinned == torch.cuda.is_available()
    assert not StagingBuffer("cpu").pinned


def test_the_encoder_stages_its_batches_and_encodes_them_as_a_fresh_stack():
    from tests.conftest import TINY_CLIP
    from xmodal.models.encoders import Encoder

    encoder = Encoder.from_spec(TINY_CLIP, "cpu")
    images = [torch.rand(3, 32, 32) for _ in range(5)]
    first = encoder.batch_pixels(images).untyped_storage().data_ptr()
    assert encoder.batch_pixels(images[:2]).untyped_storage().data_ptr() == first
    expected = encoder.encode_images(torch.stack(images))
    assert (encoder.encode_image_list(images) == expected).all()
    assert encoder.encode_image_list([]).shape == (0, encoder.embed_dim)
