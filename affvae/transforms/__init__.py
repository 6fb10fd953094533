"""Array-level transforms, below both :mod:`affvae.affinity` and :mod:`affvae.data`.

Everything here works on batches of arrays (numpy or torch) and knows nothing of
folders, configs or models:

* :mod:`~affvae.transforms.augment`: rotations, resizing, the cube symmetries and the
  imaging effects of cryo-ET (noise at an SNR, a missing wedge, a CTF), batched;
* :mod:`~affvae.transforms.imaging`: per-item normalisation and the one imaging
  function that applies the effects in their documented order;
* :mod:`~affvae.transforms.poses`: pose samplers and counter-based random numbers;
* :mod:`~affvae.transforms.glyphs`: rasterised glyphs of the alphanumeric data.
"""
