"""Type stub for the compiled batch augmentation (ext/_augment.pyx); imgconv/_augment_pure.py has the same name."""
import numpy as np
from numpy.typing import NDArray

def crop_flip_lut(images: NDArray[np.uint8], top: NDArray[np.int64], left: NDArray[np.int64],
                  flip: NDArray[np.uint8], padding: int, table: NDArray[np.unsignedinteger],
                  out: NDArray[np.unsignedinteger]) -> None: ...
