//! Config files → an in-memory tar for the engine's archive upload
//! (`PUT /containers/{id}/archive`), so files from the repo reach the
//! container through the API and remote engines need no shared disk.

use crate::model::compose::FileMount;

/// A tar holding each file at its absolute target (relative to `/`), with
/// its owner and mode. Parent directories are left to the engine, which
/// creates missing ones; listing them would reset the mode and times of
/// directories that exist (`/etc`).
pub fn files_tar(files: &[FileMount]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let path = f.target.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_size(f.content.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(u64::from(f.uid));
        header.set_gid(u64::from(f.gid));
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, f.content.as_slice())?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_holds_each_file_with_its_mode() {
        let files = vec![FileMount {
            target: "/etc/app/app.conf".into(),
            source: "config/app.conf".into(),
            content: b"port = 80\n".to_vec(),
            mode: 0o440,
            uid: 0,
            gid: 0,
        }];
        let bytes = files_tar(&files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("etc/app/app.conf"));
        assert_eq!(e.header().mode().unwrap(), 0o440);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut e, &mut content).unwrap();
        assert_eq!(content, "port = 80\n");
        assert!(entries.next().is_none());
    }
}
