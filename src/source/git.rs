//! Git repositories through gix: open a local repo or clone/fetch a remote
//! into a cache, resolve a branch/tag/sha, read a commit into a [`Snapshot`].
