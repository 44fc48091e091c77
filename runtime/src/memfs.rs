//! A per-instance, in-memory, size-capped writable filesystem: `/tmp` and
//! the working directory `/work`.
//!
//! It lives in the instance's host state and disappears with it; nothing is
//! written to the host's disk. The host side of `wasi:filesystem` is
//! wasmtime-wasi's, with this tree mixed in: descriptors of the tree are
//! [`MemDescriptor`]s in the same resource table as wasmtime-wasi's own
//! (read-only, host-backed: the standard library and mounted packages), and
//! each `wasi:filesystem` call goes to whichever kind its descriptor is.
//!
//! Limits ([`FsLimits`]): the bytes of all files together and the number of
//! files and directories. Creating a file or directory past the count, and
//! `truncate`/`pwrite` past the bytes, fail with `insufficient-space`
//! (`ENOSPC`, `OSError` errno 28 in Python); a plain `write` fills the file up
//! to the cap and then fails with `EIO` (errno 29), because wasi-libc turns
//! every stream error into `EIO`. Host memory
//! held by file contents stays within twice the byte cap (a file's buffer
//! grows by doubling, but never past what the cap still allows it).
//!
//! Names are at most 255 bytes (`ENAMETOOLONG` past it), so what the tree
//! holds besides file contents is bounded by the node cap.
//!
//! Not supported: symbolic and hard links (`not-permitted`), renaming
//! or linking between this tree and a host-backed directory (`cross-device`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::clocks::wall_clock::Datetime;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, HostDescriptor,
    HostDirectoryEntryStream, NewTimestamp, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, InputStream, OutputStream, Pollable,
    StreamError, StreamResult,
};

/// Guest path of the writable temporary directory.
pub const TMP_DIR: &str = "/tmp";
/// Guest path of the writable working directory (the current directory of
/// every call).
pub const WORK_DIR: &str = "/work";

/// Caps of one instance's in-memory filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsLimits {
    /// Bytes of all file contents together (default 64 MiB).
    pub max_bytes: u64,
    /// Files and directories together, the two roots included (default
    /// 10,000).
    pub max_files: u64,
}

impl Default for FsLimits {
    fn default() -> FsLimits {
        FsLimits {
            max_bytes: 64 << 20,
            max_files: 10_000,
        }
    }
}

type Ino = u64;

/// Longest file or directory name, in bytes (Linux's `NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

#[derive(Debug)]
enum Kind {
    Dir {
        entries: BTreeMap<String, Ino>,
        parent: Option<Ino>,
    },
    File {
        data: Vec<u8>,
    },
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// Directory entries naming this node (1, or 0 once removed).
    links: u32,
    /// Descriptors and streams open on it; an unlinked file lives until 0.
    open: u32,
    accessed: SystemTime,
    modified: SystemTime,
    changed: SystemTime,
}

impl Node {
    fn new(kind: Kind) -> Node {
        let now = SystemTime::now();
        Node {
            kind,
            links: 1,
            open: 0,
            accessed: now,
            modified: now,
            changed: now,
        }
    }

    fn size(&self) -> u64 {
        match &self.kind {
            Kind::Dir { entries, .. } => entries.len() as u64,
            Kind::File { data } => data.len() as u64,
        }
    }

    fn descriptor_type(&self) -> DescriptorType {
        match self.kind {
            Kind::Dir { .. } => DescriptorType::Directory,
            Kind::File { .. } => DescriptorType::RegularFile,
        }
    }
}

#[derive(Debug)]
struct Tree {
    nodes: HashMap<Ino, Node>,
    next: Ino,
    used_bytes: u64,
    limits: FsLimits,
    /// The roots, by guest path.
    roots: Vec<(String, Ino)>,
}

/// Why [`MemFs::to_tar`] made no archive.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    /// The archive would take this many bytes, more than allowed.
    #[error("the files would take {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A tree read from a state, not yet in use (see [`MemFs::load_tar`]).
pub(crate) struct LoadedTree(Tree);

/// One instance's in-memory filesystem (cheap to clone: a shared handle).
#[derive(Debug, Clone)]
pub(crate) struct MemFs {
    tree: Arc<Mutex<Tree>>,
    /// Distinguishes trees in `metadata-hash`.
    id: u64,
}

/// The next [`MemFs::id`].
static NEXT_TREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl MemFs {
    /// An empty tree with the two roots [`TMP_DIR`] and [`WORK_DIR`].
    pub(crate) fn new(limits: FsLimits) -> MemFs {
        MemFs {
            tree: Arc::new(Mutex::new(Tree::empty(limits, 1))),
            id: NEXT_TREE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tree> {
        // A panic while holding the lock leaves a consistent tree (every
        // mutation checks before it changes anything), so poison is ignored.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the tree holds nothing but its two empty roots.
    pub(crate) fn is_empty(&self) -> bool {
        let tree = self.lock();
        tree.roots.iter().all(|(_, ino)| {
            matches!(&tree.nodes[ino].kind, Kind::Dir { entries, .. } if entries.is_empty())
        })
    }

    /// The tree as a tar archive (directories and regular files, paths
    /// relative to `/`: `tmp/...`, `work/...`), when it takes at most
    /// `limit` bytes.
    ///
    /// # Errors
    /// [`TarError::TooLarge`] with the archive's size (an upper bound,
    /// computed before anything is built) when it exceeds `limit`;
    /// [`TarError::Io`] when writing fails.
    pub(crate) fn to_tar(&self, limit: usize) -> Result<Vec<u8>, TarError> {
        let tree = self.lock();
        let entries = tree.walk();
        // Each entry: a header, a GNU long-name record for long paths, the
        // contents padded to 512; then the two end blocks.
        let padded = |n: u64| n.div_ceil(512) * 512;
        let size: u64 = entries
            .iter()
            .map(|(path, ino)| {
                let long = if path.len() >= 100 {
                    512 + padded(path.len() as u64 + 1)
                } else {
                    0
                };
                512 + long
                    + padded(tree.nodes.get(ino).map_or(0, |n| match &n.kind {
                        Kind::File { data } => data.len() as u64,
                        Kind::Dir { .. } => 0,
                    }))
            })
            .sum::<u64>()
            + 1024;
        if size > limit as u64 {
            return Err(TarError::TooLarge(size));
        }
        let mut builder = tar::Builder::new(Vec::with_capacity(size as usize));
        for (path, ino) in &entries {
            tree.append_tar(&mut builder, path, *ino)?;
        }
        Ok(builder.into_inner()?)
    }

    /// A tree with the contents of `archive` (made by
    /// [`to_tar`](Self::to_tar)), within this tree's limits, to
    /// [`replace`](Self::replace) this one's with.
    ///
    /// # Errors
    /// A message when the archive is malformed, names a path outside the two
    /// roots or holds something other than directories and regular files, or
    /// exceeds the limits.
    pub(crate) fn load_tar(&self, archive: &[u8]) -> Result<LoadedTree, String> {
        let (limits, next) = {
            let tree = self.lock();
            (tree.limits, tree.next)
        };
        // The new tree numbers its roots 1 and 2 like every tree (the
        // guest's preopened descriptors name them) and its other nodes from
        // past the old tree's numbers, so a stale descriptor finds nothing.
        let mut fresh = Tree::empty(limits, next);
        fresh
            .fill_from_tar(archive)
            .map_err(|e| format!("the files of the state: {e}"))?;
        // Nodes the old tree makes until `replace` (code run while the state
        // is unpickled) are numbered past the new tree's, so no old
        // descriptor can name a new node.
        let mut tree = self.lock();
        tree.next = tree.next.max(fresh.next);
        Ok(LoadedTree(fresh))
    }

    /// Replaces the tree's contents with `loaded`'s. Descriptors open on the
    /// old contents, other than the roots, stop working.
    pub(crate) fn replace(&self, loaded: LoadedTree) {
        *self.lock() = loaded.0;
    }

    /// The preopened roots, as descriptors pushed into `table`.
    fn preopens(&self, table: &mut ResourceTable) -> wasmtime::Result<Vec<(u32, String)>> {
        let roots = self.lock().roots.clone();
        let mut out = Vec::new();
        for (name, ino) in roots {
            let descriptor = self.descriptor(
                ino,
                DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY,
            );
            out.push((table.push(descriptor)?.rep(), name));
        }
        Ok(out)
    }

    fn descriptor(&self, ino: Ino, flags: DescriptorFlags) -> MemDescriptor {
        self.lock().open(ino);
        MemDescriptor {
            fs: self.clone(),
            ino,
            flags,
        }
    }
}

impl Tree {
    /// A tree with two empty roots numbered 1 and 2, other nodes numbered
    /// from `next` on.
    fn empty(limits: FsLimits, next: Ino) -> Tree {
        let mut tree = Tree {
            nodes: HashMap::new(),
            next: 1,
            used_bytes: 0,
            limits,
            roots: Vec::new(),
        };
        for root in [TMP_DIR, WORK_DIR] {
            let ino = tree.alloc(Kind::Dir {
                entries: BTreeMap::new(),
                parent: None,
            });
            tree.roots.push((root.to_owned(), ino));
        }
        tree.next = tree.next.max(next);
        tree
    }

    fn fill_from_tar(&mut self, archive: &[u8]) -> Result<(), String> {
        let mut archive = tar::Archive::new(archive);
        let entries = archive.entries().map_err(|e| format!("{e}"))?;
        let tree = self;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("{e}"))?;
            let path = entry
                .path()
                .map_err(|e| format!("{e}"))?
                .to_string_lossy()
                .into_owned();
            let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
            let root = parts.next().unwrap_or_default();
            let Some(&(_, mut dir)) = tree
                .roots
                .iter()
                .find(|(name, _)| name.trim_start_matches('/') == root)
            else {
                return Err(format!("`{path}` is outside the roots"));
            };
            let names: Vec<&str> = parts.collect();
            if names.contains(&"..") {
                return Err(format!("`{path}` has `..`"));
            }
            let Some((last, dirs)) = names.split_last() else {
                continue;
            };
            for name in dirs {
                dir = match tree.lookup(dir, name) {
                    Some(ino) => ino,
                    None => tree
                        .create_dir(dir, name)
                        .map_err(|e| format!("`{path}`: {e:?}"))?,
                };
            }
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                if tree.lookup(dir, last).is_none() {
                    tree.create_dir(dir, last)
                        .map_err(|e| format!("`{path}`: {e:?}"))?;
                }
            } else if kind.is_file() {
                let size = entry.header().size().unwrap_or(u64::MAX);
                if size > tree.limits.max_bytes.saturating_sub(tree.used_bytes) {
                    return Err(format!(
                        "files of the state: `{path}` exceeds the filesystem limit"
                    ));
                }
                let mut data = Vec::with_capacity(size as usize);
                std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| format!("{e}"))?;
                let ino = tree
                    .create_file(dir, last)
                    .map_err(|e| format!("`{path}`: {e:?}"))?;
                tree.write_at(ino, 0, &data)
                    .map_err(|e| format!("`{path}`: {e:?}"))?;
            } else {
                return Err(format!(
                    "files of the state: `{path}` is neither a file nor a directory"
                ));
            }
        }
        Ok(())
    }

    fn alloc(&mut self, kind: Kind) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node::new(kind));
        ino
    }

    fn node(&self, ino: Ino) -> Result<&Node, ErrorCode> {
        self.nodes.get(&ino).ok_or(ErrorCode::BadDescriptor)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, ErrorCode> {
        self.nodes.get_mut(&ino).ok_or(ErrorCode::BadDescriptor)
    }

    fn open(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open += 1;
        }
    }

    /// A descriptor or stream on `ino` was dropped.
    fn close(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
        }
        self.collect(ino);
    }

    /// Frees `ino` when no entry names it and nothing has it open.
    fn collect(&mut self, ino: Ino) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if node.links == 0
            && node.open == 0
            && let Some(node) = self.nodes.remove(&ino)
            && let Kind::File { data } = node.kind
        {
            self.used_bytes -= data.len() as u64;
        }
    }

    fn lookup(&self, dir: Ino, name: &str) -> Option<Ino> {
        match &self.nodes.get(&dir)?.kind {
            Kind::Dir { entries, .. } => entries.get(name).copied(),
            Kind::File { .. } => None,
        }
    }

    fn entries_mut(&mut self, dir: Ino) -> Result<&mut BTreeMap<String, Ino>, ErrorCode> {
        match &mut self.node_mut(dir)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(ErrorCode::NotDirectory),
        }
    }

    /// A directory new entries may go into: it exists and is not removed
    /// (an open descriptor can outlive `rmdir`).
    fn live_dir(&self, dir: Ino) -> Result<(), ErrorCode> {
        let node = self.node(dir)?;
        if node.links == 0 {
            return Err(ErrorCode::NoEntry);
        }
        match node.kind {
            Kind::Dir { .. } => Ok(()),
            Kind::File { .. } => Err(ErrorCode::NotDirectory),
        }
    }

    fn check_new_node(&self) -> Result<(), ErrorCode> {
        if self.nodes.len() as u64 >= self.limits.max_files {
            return Err(ErrorCode::InsufficientSpace);
        }
        Ok(())
    }

    fn check_name(name: &str) -> Result<(), ErrorCode> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(ErrorCode::Invalid);
        }
        // Names are host memory outside the byte cap: bounded like NAME_MAX.
        if name.len() > MAX_NAME_BYTES {
            return Err(ErrorCode::NameTooLong);
        }
        Ok(())
    }

    fn create_dir(&mut self, parent: Ino, name: &str) -> Result<Ino, ErrorCode> {
        Self::check_name(name)?;
        self.live_dir(parent)?;
        if self.entries_mut(parent)?.contains_key(name) {
            return Err(ErrorCode::Exist);
        }
        self.check_new_node()?;
        let ino = self.alloc(Kind::Dir {
            entries: BTreeMap::new(),
            parent: Some(parent),
        });
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    fn create_file(&mut self, parent: Ino, name: &str) -> Result<Ino, ErrorCode> {
        Self::check_name(name)?;
        self.live_dir(parent)?;
        if self.entries_mut(parent)?.contains_key(name) {
            return Err(ErrorCode::Exist);
        }
        self.check_new_node()?;
        let ino = self.alloc(Kind::File { data: Vec::new() });
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            node.modified = now;
            node.changed = now;
        }
    }

    /// Resolves `path` relative to directory `base` to its parent directory
    /// and last component (`None` for the base itself). `..` may not leave
    /// `base`; absolute paths are refused (as wasmtime-wasi does).
    fn resolve_parent<'p>(
        &self,
        base: Ino,
        path: &'p str,
    ) -> Result<(Ino, Option<&'p str>), ErrorCode> {
        if path.starts_with('/') {
            return Err(ErrorCode::NotPermitted);
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let mut stack = vec![base];
        let Some((last, dirs)) = parts.split_last() else {
            return Ok((base, None));
        };
        for name in dirs {
            self.step(&mut stack, name)?;
        }
        let dir = *stack.last().expect("never empty");
        if *last == ".." {
            if stack.len() == 1 {
                return Err(ErrorCode::NotPermitted);
            }
            stack.pop();
            return Ok((*stack.last().expect("never empty"), None));
        }
        // A trailing slash names a directory; the caller checks the type.
        Ok((dir, Some(last)))
    }

    fn step(&self, stack: &mut Vec<Ino>, name: &str) -> Result<(), ErrorCode> {
        if name == ".." {
            if stack.len() == 1 {
                return Err(ErrorCode::NotPermitted);
            }
            stack.pop();
            return Ok(());
        }
        let dir = *stack.last().expect("never empty");
        match &self.node(dir)?.kind {
            Kind::Dir { entries, .. } => {
                let ino = *entries.get(name).ok_or(ErrorCode::NoEntry)?;
                if !matches!(self.node(ino)?.kind, Kind::Dir { .. }) {
                    return Err(ErrorCode::NotDirectory);
                }
                stack.push(ino);
                Ok(())
            }
            Kind::File { .. } => Err(ErrorCode::NotDirectory),
        }
    }

    /// The node `path` names, relative to `base`.
    fn resolve(&self, base: Ino, path: &str) -> Result<Ino, ErrorCode> {
        match self.resolve_parent(base, path)? {
            (dir, None) => Ok(dir),
            (dir, Some(name)) => self
                .lookup(dir, name)
                .ok_or(ErrorCode::NoEntry)
                .and_then(|ino| {
                    if wants_dir(path) && !matches!(self.node(ino)?.kind, Kind::Dir { .. }) {
                        return Err(ErrorCode::NotDirectory);
                    }
                    Ok(ino)
                }),
        }
    }

    fn stat(&self, ino: Ino) -> Result<DescriptorStat, ErrorCode> {
        let node = self.node(ino)?;
        Ok(DescriptorStat {
            type_: node.descriptor_type(),
            link_count: u64::from(node.links.max(1)),
            size: node.size(),
            data_access_timestamp: Some(datetime(node.accessed)),
            data_modification_timestamp: Some(datetime(node.modified)),
            status_change_timestamp: Some(datetime(node.changed)),
        })
    }

    /// Sets the size of file `ino` to `size`, within the byte limit.
    fn set_size(&mut self, ino: Ino, size: u64) -> Result<(), ErrorCode> {
        let (used, max) = (self.used_bytes, self.limits.max_bytes);
        let Kind::File { data } = &mut self.node_mut(ino)?.kind else {
            return Err(ErrorCode::IsDirectory);
        };
        let old = data.len() as u64;
        if size > old {
            let grow = size - old;
            if grow > max.saturating_sub(used) {
                return Err(ErrorCode::InsufficientSpace);
            }
            reserve(data, size as usize, (max - used - grow) as usize);
            data.resize(size as usize, 0);
            self.used_bytes += grow;
        } else {
            data.truncate(size as usize);
            data.shrink_to(size as usize * 2);
            self.used_bytes -= old - size;
        }
        self.touch(ino);
        Ok(())
    }

    /// Writes `bytes` at `offset` of file `ino` (zero-filling a gap), within
    /// the byte limit; returns the new end of the write.
    fn write_at(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Result<u64, ErrorCode> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or(ErrorCode::InsufficientSpace)?;
        let len = match &self.node(ino)?.kind {
            Kind::File { data } => data.len() as u64,
            Kind::Dir { .. } => return Err(ErrorCode::IsDirectory),
        };
        if end > len {
            self.set_size(ino, end)?;
        }
        let Kind::File { data } = &mut self.node_mut(ino)?.kind else {
            return Err(ErrorCode::IsDirectory);
        };
        data[offset as usize..end as usize].copy_from_slice(bytes);
        self.touch(ino);
        Ok(end)
    }

    fn read_at(&mut self, ino: Ino, offset: u64, len: u64) -> Result<Vec<u8>, ErrorCode> {
        let node = self.node_mut(ino)?;
        node.accessed = SystemTime::now();
        let Kind::File { data } = &node.kind else {
            return Err(ErrorCode::IsDirectory);
        };
        let start = (offset.min(data.len() as u64)) as usize;
        let end = (offset.saturating_add(len).min(data.len() as u64)) as usize;
        Ok(data[start..end].to_vec())
    }

    /// Removes entry `name` of `dir`; `want_dir` says which kind it must be.
    fn remove(&mut self, dir: Ino, name: &str, want_dir: bool) -> Result<(), ErrorCode> {
        let ino = self.lookup(dir, name).ok_or(ErrorCode::NoEntry)?;
        match &self.node(ino)?.kind {
            Kind::Dir { entries, .. } => {
                if !want_dir {
                    return Err(ErrorCode::IsDirectory);
                }
                if !entries.is_empty() {
                    return Err(ErrorCode::NotEmpty);
                }
            }
            Kind::File { .. } => {
                if want_dir {
                    return Err(ErrorCode::NotDirectory);
                }
            }
        }
        self.entries_mut(dir)?.remove(name);
        self.touch(dir);
        let node = self.node_mut(ino)?;
        node.links = node.links.saturating_sub(1);
        node.changed = SystemTime::now();
        self.collect(ino);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).map(|n| &n.kind) {
                Some(Kind::Dir {
                    parent: Some(parent),
                    ..
                }) => ino = *parent,
                _ => return false,
            }
        }
    }

    fn rename(
        &mut self,
        old_dir: Ino,
        old: &str,
        new_dir: Ino,
        new: &str,
    ) -> Result<(), ErrorCode> {
        Self::check_name(new)?;
        self.live_dir(new_dir)?;
        let ino = self.lookup(old_dir, old).ok_or(ErrorCode::NoEntry)?;
        let is_dir = matches!(self.node(ino)?.kind, Kind::Dir { .. });
        if is_dir && self.is_ancestor(ino, new_dir) {
            return Err(ErrorCode::Invalid);
        }
        self.entries_mut(new_dir)?;
        if let Some(existing) = self.lookup(new_dir, new) {
            if existing == ino {
                return Ok(());
            }
            let existing_is_dir = matches!(self.node(existing)?.kind, Kind::Dir { .. });
            match (is_dir, existing_is_dir) {
                (true, false) => return Err(ErrorCode::NotDirectory),
                (false, true) => return Err(ErrorCode::IsDirectory),
                _ => {}
            }
            self.remove(new_dir, new, existing_is_dir)?;
        }
        self.entries_mut(old_dir)?.remove(old);
        self.entries_mut(new_dir)?.insert(new.to_owned(), ino);
        if let Kind::Dir { parent, .. } = &mut self.node_mut(ino)?.kind {
            *parent = Some(new_dir);
        }
        self.touch(old_dir);
        self.touch(new_dir);
        Ok(())
    }

    /// Every node under the roots with its path (`tmp/a/b`), parents
    /// before children; iterative, so a deep tree cannot overflow the stack.
    fn walk(&self) -> Vec<(String, Ino)> {
        let mut out = Vec::new();
        let mut pending: Vec<(String, Ino)> = self
            .roots
            .iter()
            .rev()
            .map(|(root, ino)| (root.trim_start_matches('/').to_owned(), *ino))
            .collect();
        while let Some((path, ino)) = pending.pop() {
            if let Some(Node {
                kind: Kind::Dir { entries, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                for (name, child) in entries.iter().rev() {
                    pending.push((format!("{path}/{name}"), *child));
                }
            }
            out.push((path, ino));
        }
        out
    }

    /// Appends one node (a directory's header only, not its children).
    fn append_tar(
        &self,
        builder: &mut tar::Builder<Vec<u8>>,
        path: &str,
        ino: Ino,
    ) -> std::io::Result<()> {
        let Some(node) = self.nodes.get(&ino) else {
            return Ok(());
        };
        let mut header = tar::Header::new_gnu();
        header.set_mtime(
            node.modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        match &node.kind {
            Kind::Dir { entries, .. } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                let _ = entries;
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Kind::File { data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
        }
        Ok(())
    }
}

/// Whether `path` can only name a directory (`a/`, `a/.`).
fn wants_dir(path: &str) -> bool {
    path.ends_with('/') || path.ends_with("/.") || path == "."
}

/// Grows `data`'s buffer to hold `len` bytes: by doubling, but by no more
/// than `spare` bytes beyond `len`.
fn reserve(data: &mut Vec<u8>, len: usize, spare: usize) {
    if len <= data.capacity() {
        return;
    }
    let target = len
        .max(data.capacity().saturating_mul(2))
        .min(len.saturating_add(spare));
    data.reserve_exact(target - data.len());
}

fn datetime(time: SystemTime) -> Datetime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Datetime {
        seconds: since.as_secs(),
        nanoseconds: since.subsec_nanos(),
    }
}

fn timestamp(new: NewTimestamp) -> Option<SystemTime> {
    match new {
        NewTimestamp::NoChange => None,
        NewTimestamp::Now => Some(SystemTime::now()),
        // A time the host cannot represent is never a panic on guest input.
        NewTimestamp::Timestamp(t) => SystemTime::UNIX_EPOCH
            .checked_add(std::time::Duration::new(
                t.seconds,
                t.nanoseconds.min(999_999_999),
            ))
            .or(Some(SystemTime::UNIX_EPOCH)),
    }
}

/// A descriptor on a node of a [`MemFs`], kept in the instance's resource
/// table under wasmtime-wasi's `descriptor` resource type.
pub(crate) struct MemDescriptor {
    fs: MemFs,
    ino: Ino,
    flags: DescriptorFlags,
}

impl Drop for MemDescriptor {
    fn drop(&mut self) {
        self.fs.lock().close(self.ino);
    }
}

/// The directory listing a `read-directory` call took.
struct MemReaddir {
    entries: std::vec::IntoIter<DirectoryEntry>,
}

/// A `read-via-stream` stream on a file of a [`MemFs`].
struct MemInput {
    fs: MemFs,
    ino: Ino,
    position: u64,
}

impl Drop for MemInput {
    fn drop(&mut self) {
        self.fs.lock().close(self.ino);
    }
}

#[async_trait::async_trait]
impl Pollable for MemInput {
    async fn ready(&mut self) {}
}

impl InputStream for MemInput {
    fn read(&mut self, size: usize) -> StreamResult<bytes::Bytes> {
        let data = self
            .fs
            .lock()
            .read_at(self.ino, self.position, size as u64)
            .map_err(stream_error)?;
        if data.is_empty() && size > 0 {
            return Err(StreamError::Closed);
        }
        self.position += data.len() as u64;
        Ok(data.into())
    }
}

/// A `write-via-stream` (at a position) or `append-via-stream` (`None`)
/// stream on a file of a [`MemFs`].
struct MemOutput {
    fs: MemFs,
    ino: Ino,
    position: Option<u64>,
}

impl Drop for MemOutput {
    fn drop(&mut self) {
        self.fs.lock().close(self.ino);
    }
}

#[async_trait::async_trait]
impl Pollable for MemOutput {
    async fn ready(&mut self) {}
}

/// Most bytes one stream write takes (wasmtime-wasi's own file streams
/// allow the same).
const WRITE_PERMIT: usize = 1 << 20;

impl OutputStream for MemOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let mut tree = self.fs.lock();
        let offset = match self.position {
            Some(position) => position,
            None => tree.node(self.ino).map_err(stream_error)?.size(),
        };
        let end = tree
            .write_at(self.ino, offset, &bytes)
            .map_err(stream_error)?;
        if let Some(position) = &mut self.position {
            *position = end;
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    /// Permits a write up to what the byte cap still allows at the stream's
    /// position (so a file fills exactly to the cap), and at least one byte:
    /// a full tree is reported by `write`, not here (wasmtime-wasi checks
    /// readiness again after a complete write, which must then succeed).
    /// wasi-libc reports any failure of a
    /// stream as `EIO` (`wasip2_handle_write_error`), so a stream write past
    /// the cap is `EIO` in Python, not `ENOSPC`.
    fn check_write(&mut self) -> StreamResult<usize> {
        let tree = self.fs.lock();
        let len = tree.node(self.ino).map_err(stream_error)?.size();
        let overwrite = self.position.map_or(0, |p| len.saturating_sub(p));
        let room = overwrite.saturating_add(tree.limits.max_bytes.saturating_sub(tree.used_bytes));
        Ok(room.clamp(1, WRITE_PERMIT as u64) as usize)
    }
}

/// The error of a stream on a [`MemFs`] file, read back by
/// `filesystem-error-code`.
#[derive(Debug, thiserror::Error)]
#[error("in-memory filesystem: {0:?}")]
struct MemStreamError(ErrorCode);

fn stream_error(code: ErrorCode) -> StreamError {
    StreamError::LastOperationFailed(wasmtime::Error::new(MemStreamError(code)))
}

/// `wasi:filesystem` for one instance: its [`MemFs`] and wasmtime-wasi's
/// host-backed directories side by side.
pub(crate) struct FsView<'a> {
    pub(crate) host: WasiFilesystemCtxView<'a>,
    pub(crate) mem: &'a MemFs,
}

/// [`wasmtime::component::HasData`] for [`FsView`].
pub(crate) struct MixedFilesystem;

impl wasmtime::component::HasData for MixedFilesystem {
    type Data<'a> = FsView<'a>;
}

fn err<T>(code: ErrorCode) -> FsResult<T> {
    Err(FsError::from(code))
}

impl FsView<'_> {
    /// The in-memory descriptor `fd` stands for, if it is one.
    fn mem(&mut self, fd: &Resource<types::Descriptor>) -> Option<(MemFs, Ino, DescriptorFlags)> {
        let any = self.host.table.get_any_mut(fd.rep()).ok()?;
        let d = any.downcast_ref::<MemDescriptor>()?;
        Some((d.fs.clone(), d.ino, d.flags))
    }

    fn push_descriptor(
        &mut self,
        descriptor: MemDescriptor,
    ) -> FsResult<Resource<types::Descriptor>> {
        let rep = self
            .host
            .table
            .push(descriptor)
            .map_err(FsError::trap)?
            .rep();
        Ok(Resource::new_own(rep))
    }
}

impl preopens::Host for FsView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<types::Descriptor>, String)>> {
        let mut dirs = preopens::Host::get_directories(&mut self.host)?;
        for (rep, name) in self.mem.preopens(self.host.table)? {
            dirs.push((Resource::new_own(rep), name));
        }
        Ok(dirs)
    }
}

impl types::Host for FsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.host, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        if let Some(MemStreamError(code)) = self.host.table.get(&err)?.downcast_ref() {
            return Ok(Some(*code));
        }
        types::Host::filesystem_error_code(&mut self.host, err)
    }
}

/// Runs `$mem` when `$fd` is in-memory (binding `$fs`, `$ino`, `$flags`),
/// wasmtime-wasi's implementation otherwise.
macro_rules! either {
    ($self:ident, $fd:ident, |$fs:ident, $ino:ident, $flags:ident| $mem:block, $host:expr) => {
        match $self.mem(&$fd) {
            Some(($fs, $ino, $flags)) => {
                let _ = &$flags;
                $mem
            }
            None => $host,
        }
    };
}

impl HostDescriptor for FsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
        len: u64,
        advice: types::Advice,
    ) -> FsResult<()> {
        either!(self, fd, |_fs, _ino, flags| { Ok(()) }, {
            HostDescriptor::advise(&mut self.host, fd, offset, len, advice).await
        })
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        either!(self, fd, |_fs, _ino, flags| { Ok(()) }, {
            HostDescriptor::sync_data(&mut self.host, fd).await
        })
    }

    async fn get_flags(&mut self, fd: Resource<types::Descriptor>) -> FsResult<DescriptorFlags> {
        either!(self, fd, |_fs, _ino, flags| { Ok(flags) }, {
            HostDescriptor::get_flags(&mut self.host, fd).await
        })
    }

    async fn get_type(&mut self, fd: Resource<types::Descriptor>) -> FsResult<DescriptorType> {
        either!(
            self,
            fd,
            |fs, ino, flags| { Ok(fs.lock().node(ino)?.descriptor_type()) },
            HostDescriptor::get_type(&mut self.host, fd).await
        )
    }

    async fn set_size(&mut self, fd: Resource<types::Descriptor>, size: u64) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                if !flags.contains(DescriptorFlags::WRITE) {
                    return err(ErrorCode::BadDescriptor);
                }
                Ok(fs.lock().set_size(ino, size)?)
            },
            HostDescriptor::set_size(&mut self.host, fd, size).await
        )
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: NewTimestamp,
        mtim: NewTimestamp,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let mut tree = fs.lock();
                let node = tree.node_mut(ino)?;
                if let Some(t) = timestamp(atim) {
                    node.accessed = t;
                }
                if let Some(t) = timestamp(mtim) {
                    node.modified = t;
                }
                Ok(())
            },
            HostDescriptor::set_times(&mut self.host, fd, atim, mtim).await
        )
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: u64,
        offset: u64,
    ) -> FsResult<(Vec<u8>, bool)> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                if !flags.contains(DescriptorFlags::READ) {
                    return err(ErrorCode::BadDescriptor);
                }
                let mut tree = fs.lock();
                let data = tree.read_at(ino, offset, len.min(WRITE_PERMIT as u64 * 16))?;
                let end = offset.saturating_add(data.len() as u64) >= tree.node(ino)?.size();
                Ok((data, end))
            },
            HostDescriptor::read(&mut self.host, fd, len, offset).await
        )
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: u64,
    ) -> FsResult<u64> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                if !flags.contains(DescriptorFlags::WRITE) {
                    return err(ErrorCode::BadDescriptor);
                }
                fs.lock().write_at(ino, offset, &buf)?;
                Ok(buf.len() as u64)
            },
            HostDescriptor::write(&mut self.host, fd, buf, offset).await
        )
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let listing = {
                    let tree = fs.lock();
                    let Kind::Dir { entries, .. } = &tree.node(ino)?.kind else {
                        return err(ErrorCode::NotDirectory);
                    };
                    entries
                        .iter()
                        .map(|(name, child)| DirectoryEntry {
                            type_: tree
                                .nodes
                                .get(child)
                                .map_or(DescriptorType::Unknown, Node::descriptor_type),
                            name: name.clone(),
                        })
                        .collect::<Vec<_>>()
                };
                let rep = self
                    .host
                    .table
                    .push(MemReaddir {
                        entries: listing.into_iter(),
                    })
                    .map_err(FsError::trap)?
                    .rep();
                Ok(Resource::new_own(rep))
            },
            HostDescriptor::read_directory(&mut self.host, fd).await
        )
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        either!(self, fd, |_fs, _ino, flags| { Ok(()) }, {
            HostDescriptor::sync(&mut self.host, fd).await
        })
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let mut tree = fs.lock();
                let (dir, name) = tree.resolve_parent(ino, &path)?;
                let Some(name) = name else {
                    return err(ErrorCode::Exist);
                };
                tree.create_dir(dir, name)?;
                Ok(())
            },
            HostDescriptor::create_directory_at(&mut self.host, fd, path).await
        )
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<DescriptorStat> {
        either!(
            self,
            fd,
            |fs, ino, flags| { Ok(fs.lock().stat(ino)?) },
            HostDescriptor::stat(&mut self.host, fd).await
        )
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<DescriptorStat> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let tree = fs.lock();
                Ok(tree.stat(tree.resolve(ino, &path)?)?)
            },
            HostDescriptor::stat_at(&mut self.host, fd, path_flags, path).await
        )
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: PathFlags,
        path: String,
        atim: NewTimestamp,
        mtim: NewTimestamp,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let mut tree = fs.lock();
                let target = tree.resolve(ino, &path)?;
                let node = tree.node_mut(target)?;
                if let Some(t) = timestamp(atim) {
                    node.accessed = t;
                }
                if let Some(t) = timestamp(mtim) {
                    node.modified = t;
                }
                Ok(())
            },
            HostDescriptor::set_times_at(&mut self.host, fd, path_flags, path, atim, mtim).await
        )
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path_flags: PathFlags,
        old_path: String,
        new_descriptor: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        match (self.mem(&fd), self.mem(&new_descriptor)) {
            // Hard links are not offered: a link would be a second entry
            // for one node, outside the node count, and a state would carry
            // its contents once per link.
            (Some(_), Some(_)) => err(ErrorCode::NotPermitted),
            (None, None) => {
                HostDescriptor::link_at(
                    &mut self.host,
                    fd,
                    old_path_flags,
                    old_path,
                    new_descriptor,
                    new_path,
                )
                .await
            }
            _ => err(ErrorCode::CrossDevice),
        }
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: PathFlags,
        path: String,
        oflags: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        let Some((fs, base, base_flags)) = self.mem(&fd) else {
            return HostDescriptor::open_at(&mut self.host, fd, path_flags, path, oflags, flags)
                .await;
        };
        let _ = base_flags;
        let ino = {
            let mut tree = fs.lock();
            let (dir, name) = tree.resolve_parent(base, &path)?;
            let existing = match name {
                None => Some(dir),
                Some(name) => tree.lookup(dir, name),
            };
            let ino = match existing {
                Some(ino) => {
                    if oflags.contains(OpenFlags::CREATE) && oflags.contains(OpenFlags::EXCLUSIVE) {
                        return err(ErrorCode::Exist);
                    }
                    ino
                }
                None => {
                    if !oflags.contains(OpenFlags::CREATE) {
                        return err(ErrorCode::NoEntry);
                    }
                    if oflags.contains(OpenFlags::DIRECTORY) || wants_dir(&path) {
                        return err(ErrorCode::Invalid);
                    }
                    tree.create_file(dir, name.expect("a new entry has a name"))?
                }
            };
            let is_dir = matches!(tree.node(ino)?.kind, Kind::Dir { .. });
            if is_dir {
                if flags.contains(DescriptorFlags::WRITE) || oflags.contains(OpenFlags::TRUNCATE) {
                    return err(ErrorCode::IsDirectory);
                }
            } else {
                if oflags.contains(OpenFlags::DIRECTORY) || wants_dir(&path) {
                    return err(ErrorCode::NotDirectory);
                }
                if oflags.contains(OpenFlags::TRUNCATE) {
                    if !flags.contains(DescriptorFlags::WRITE) {
                        return err(ErrorCode::NotPermitted);
                    }
                    tree.set_size(ino, 0)?;
                }
            }
            ino
        };
        let descriptor = fs.descriptor(ino, flags);
        self.push_descriptor(descriptor)
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        if self.mem(&fd).is_some() {
            self.host
                .table
                .delete(Resource::<MemDescriptor>::new_own(fd.rep()))?;
            return Ok(());
        }
        HostDescriptor::drop(&mut self.host, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                fs.lock().resolve(ino, &path)?;
                err(ErrorCode::Invalid)
            },
            HostDescriptor::readlink_at(&mut self.host, fd, path).await
        )
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let mut tree = fs.lock();
                let (dir, Some(name)) = tree.resolve_parent(ino, &path)? else {
                    return err(ErrorCode::Busy);
                };
                Ok(tree.remove(dir, name, true)?)
            },
            HostDescriptor::remove_directory_at(&mut self.host, fd, path).await
        )
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        match (self.mem(&fd), self.mem(&new_fd)) {
            (Some((fs, old_base, _)), Some((_, new_base, _))) => {
                let mut tree = fs.lock();
                let (old_dir, Some(old)) = tree.resolve_parent(old_base, &old_path)? else {
                    return err(ErrorCode::Busy);
                };
                let (new_dir, Some(new)) = tree.resolve_parent(new_base, &new_path)? else {
                    return err(ErrorCode::Busy);
                };
                // `a/` names a directory: a file there is ENOTDIR.
                if wants_dir(&old_path) || wants_dir(&new_path) {
                    let source = tree.lookup(old_dir, old).ok_or(ErrorCode::NoEntry)?;
                    if !matches!(tree.node(source)?.kind, Kind::Dir { .. }) {
                        return err(ErrorCode::NotDirectory);
                    }
                }
                Ok(tree.rename(old_dir, old, new_dir, new)?)
            }
            (None, None) => {
                HostDescriptor::rename_at(&mut self.host, fd, old_path, new_fd, new_path).await
            }
            _ => err(ErrorCode::CrossDevice),
        }
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |_fs, _ino, flags| { err(ErrorCode::NotPermitted) },
            { HostDescriptor::symlink_at(&mut self.host, fd, src_path, dest_path).await }
        )
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let mut tree = fs.lock();
                let (dir, Some(name)) = tree.resolve_parent(ino, &path)? else {
                    return err(ErrorCode::IsDirectory);
                };
                if wants_dir(&path) {
                    let target = tree.lookup(dir, name).ok_or(ErrorCode::NoEntry)?;
                    return err(match tree.node(target)?.kind {
                        Kind::Dir { .. } => ErrorCode::IsDirectory,
                        Kind::File { .. } => ErrorCode::NotDirectory,
                    });
                }
                Ok(tree.remove(dir, name, false)?)
            },
            HostDescriptor::unlink_file_at(&mut self.host, fd, path).await
        )
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<DynInputStream>> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                if !matches!(fs.lock().node(ino)?.kind, Kind::File { .. }) {
                    return err(ErrorCode::IsDirectory);
                }
                if !flags.contains(DescriptorFlags::READ) {
                    return err(ErrorCode::BadDescriptor);
                }
                fs.lock().open(ino);
                let stream: DynInputStream = Box::new(MemInput {
                    fs,
                    ino,
                    position: offset,
                });
                Ok(self.host.table.push(stream).map_err(FsError::trap)?)
            },
            HostDescriptor::read_via_stream(&mut self.host, fd, offset)
        )
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<DynOutputStream>> {
        either!(
            self,
            fd,
            |fs, ino, flags| { self.output(fs, ino, flags, Some(offset)) },
            HostDescriptor::write_via_stream(&mut self.host, fd, offset)
        )
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        either!(
            self,
            fd,
            |fs, ino, flags| { self.output(fs, ino, flags, None) },
            HostDescriptor::append_via_stream(&mut self.host, fd)
        )
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        match (self.mem(&a), self.mem(&b)) {
            (Some((_, a, _)), Some((_, b, _))) => Ok(a == b),
            (None, None) => HostDescriptor::is_same_object(&mut self.host, a, b).await,
            _ => Ok(false),
        }
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        either!(
            self,
            fd,
            |fs, ino, flags| { Ok(metadata_hash(&fs, ino)) },
            HostDescriptor::metadata_hash(&mut self.host, fd).await
        )
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        either!(
            self,
            fd,
            |fs, ino, flags| {
                let target = fs.lock().resolve(ino, &path)?;
                Ok(metadata_hash(&fs, target))
            },
            HostDescriptor::metadata_hash_at(&mut self.host, fd, path_flags, path).await
        )
    }
}

impl FsView<'_> {
    fn output(
        &mut self,
        fs: MemFs,
        ino: Ino,
        flags: DescriptorFlags,
        position: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        if !matches!(fs.lock().node(ino)?.kind, Kind::File { .. }) {
            return err(ErrorCode::IsDirectory);
        }
        if !flags.contains(DescriptorFlags::WRITE) {
            return err(ErrorCode::BadDescriptor);
        }
        fs.lock().open(ino);
        let stream: DynOutputStream = Box::new(MemOutput { fs, ino, position });
        self.host.table.push(stream).map_err(FsError::trap)
    }
}

/// A node's identity for `metadata-hash`: its number, and the tree's own
/// number (a process-wide count, not an address: nothing of the host's
/// memory layout reaches the guest).
fn metadata_hash(fs: &MemFs, ino: Ino) -> types::MetadataHashValue {
    types::MetadataHashValue {
        lower: ino,
        upper: fs.id,
    }
}

impl HostDirectoryEntryStream for FsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        let mine = self
            .host
            .table
            .get_any_mut(stream.rep())
            .ok()
            .and_then(|any| any.downcast_mut::<MemReaddir>());
        match mine {
            Some(listing) => Ok(listing.entries.next()),
            None => HostDirectoryEntryStream::read_directory_entry(&mut self.host, stream).await,
        }
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        let mine = self
            .host
            .table
            .get_any_mut(stream.rep())
            .is_ok_and(|any| any.is::<MemReaddir>());
        if mine {
            self.host
                .table
                .delete(Resource::<MemReaddir>::new_own(stream.rep()))?;
            return Ok(());
        }
        HostDirectoryEntryStream::drop(&mut self.host, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with one regular file whose raw header name is `name`
    /// (bypassing the tar builder's own path checks, as a tampered state
    /// would).
    fn tar_with(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn a_tree_round_trips_through_tar() {
        let fs = MemFs::new(FsLimits::default());
        {
            let mut tree = fs.lock();
            let tmp = tree.roots[0].1;
            let dir = tree.create_dir(tmp, "d").unwrap();
            let file = tree.create_file(dir, "f").unwrap();
            tree.write_at(file, 0, b"hello").unwrap();
        }
        let archive = fs.to_tar(1 << 20).unwrap();
        let other = MemFs::new(FsLimits::default());
        other.replace(other.load_tar(&archive).unwrap());
        let tree = other.lock();
        let file = tree.resolve(tree.roots[0].1, "d/f").unwrap();
        assert_eq!(tree.node(file).unwrap().size(), 5);
        assert_eq!(tree.used_bytes, 5);
    }

    #[test]
    fn a_tampered_state_cannot_leave_the_roots_or_the_limits() {
        let fs = MemFs::new(FsLimits {
            max_bytes: 10,
            max_files: 5,
        });
        for name in [
            &b"tmp/../../etc/passwd"[..],
            b"etc/passwd",
            b"/python/os.py",
        ] {
            let error = fs.load_tar(&tar_with(name, b"x")).err();
            assert!(error.is_some(), "{}", String::from_utf8_lossy(name));
        }
        let error = fs.load_tar(&tar_with(b"tmp/big", &[0; 11])).err().unwrap();
        assert!(error.contains("limit"), "{error}");
        assert!(fs.load_tar(&tar_with(b"work/ok", &[0; 10])).is_ok());
        assert!(
            fs.load_tar(b"not a tar at all, but long enough to look at")
                .is_err()
        );
    }
}
