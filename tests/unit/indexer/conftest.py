import faiss
import pytest


@pytest.fixture(scope="module")
def one_faiss_thread():
    """On a small shared machine, faiss's OpenMP threads spin against other processes: PQ/OPQ training
    ran 10x slower with 2 threads than with 1 on this project's 2-core box. Tests stay small and serial."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
