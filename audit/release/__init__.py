"""``audit compare OLD NEW``: the paired comparison of two runs (:mod:`.compare`), its release
gates (:mod:`.gates`) and the files it reads and writes (:mod:`.io`)."""
