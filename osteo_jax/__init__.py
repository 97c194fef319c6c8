"""osteo_jax: osteoporosis screening from hand radiographs (research code, synthetic data).

No output of this package is a diagnosis; it has not been validated on patients.
"""

__version__ = "0.1.0"
