//! Which writes to a log file wait to be made together, and when they are made: the rules of
//! the crate's docs, without SQLite, so that they can be tested on their own.

use std::ffi::c_int;

use rusqlite::ffi;

/// A frame's header in SQLite's log: the page's number, then the database's size in pages
/// after the commit, which only a commit's last frame carries (0 in every other frame).
const FRAME_HEADER_BYTES: usize = 24;
const DATABASE_SIZE: std::ops::Range<usize> = 4..8;

/// The longest run: the unix VFS writes at most this many bytes a call (it keeps the low 17
/// bits of a write's length, `seekAndWriteFd`). A frame that would take a run past it starts
/// another, so a commit of more than 63 frames of 2 KiB is written in two calls or more.
const MOST_GATHERED: usize = 0x1_ffff;

/// Makes one write to the file: the bytes and their offset; SQLite's result code.
pub(crate) type Sink<'a> = dyn FnMut(&[u8], i64) -> c_int + 'a;

/// Consecutive frames written by SQLite and not yet by us.
#[derive(Default)]
pub(crate) struct Gathered {
    /// Where `bytes` start in the file.
    offset: i64,
    bytes: Vec<u8>,
    /// The last write gathered was the header of a commit's last frame: its page, next, ends
    /// the commit.
    awaits_commit_page: bool,
    /// The length of the pages gathered (one database has one page size), 0 before the first.
    page_bytes: usize,
}

impl Gathered {
    /// Takes SQLite's write of `bytes` at `offset`, and writes to `sink` whatever must be
    /// written by the time it returns.
    pub(crate) fn write(&mut self, bytes: &[u8], offset: i64, sink: &mut Sink<'_>) -> c_int {
        if !(self.is_continued_by(offset) && self.has_room_for(bytes)) {
            let written = self.flush(sink);
            if written != ffi::SQLITE_OK {
                return written;
            }
            // A run starts with a frame that does not end a commit: a commit frame alone (or
            // a header rewritten in place, as SQLite does to fix checksums just before it
            // publishes a commit) may be followed by nothing else before others read it.
            if !can_start_a_run(bytes) {
                return sink(bytes, offset);
            }
            self.offset = offset;
        }
        let ends_commit = self.awaits_commit_page;
        self.bytes.extend_from_slice(bytes);
        self.awaits_commit_page = ends_a_commit(bytes);
        if bytes.len() != FRAME_HEADER_BYTES {
            self.page_bytes = bytes.len();
        }
        if ends_commit {
            self.flush(sink)
        } else {
            ffi::SQLITE_OK
        }
    }

    /// Writes what is gathered, if anything. Gathered bytes are dropped either way: a failed
    /// write is reported to SQLite, which then treats the frames as never written.
    pub(crate) fn flush(&mut self, sink: &mut Sink<'_>) -> c_int {
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let written = sink(&self.bytes, self.offset);
        self.bytes.clear();
        self.awaits_commit_page = false;
        written
    }

    /// Whether the run can take `bytes` within `MOST_GATHERED`: a frame's header only with room
    /// for its page too, so that a run ends between frames.
    fn has_room_for(&self, bytes: &[u8]) -> bool {
        let taken = if bytes.len() == FRAME_HEADER_BYTES {
            FRAME_HEADER_BYTES + self.page_bytes
        } else {
            bytes.len()
        };
        self.bytes.len() + taken <= MOST_GATHERED
    }

    /// Whether a write at `offset` extends the run gathered so far.
    fn is_continued_by(&self, offset: i64) -> bool {
        !self.bytes.is_empty()
            && i64::try_from(self.bytes.len()).is_ok_and(|length| self.offset + length == offset)
    }
}

/// Whether `bytes` are the header of a frame that does not end a commit.
fn can_start_a_run(bytes: &[u8]) -> bool {
    bytes.len() == FRAME_HEADER_BYTES && !ends_a_commit(bytes)
}

/// Whether `bytes` are the header of a commit's last frame.
fn ends_a_commit(bytes: &[u8]) -> bool {
    bytes.len() == FRAME_HEADER_BYTES && bytes[DATABASE_SIZE] != [0; 4]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 2048;
    const FRAME: i64 = (FRAME_HEADER_BYTES + PAGE) as i64;
    /// A log's own header is 32 bytes; its first frame follows.
    const FIRST_FRAME: i64 = 32;

    /// What reached the file: each write's offset and length.
    #[derive(Default)]
    struct File {
        writes: Vec<(i64, usize)>,
        fails: bool,
    }

    impl File {
        fn sink(&mut self) -> impl FnMut(&[u8], i64) -> c_int + '_ {
            |bytes, offset| {
                self.writes.push((offset, bytes.len()));
                if self.fails {
                    ffi::SQLITE_IOERR_WRITE
                } else {
                    ffi::SQLITE_OK
                }
            }
        }
    }

    fn header(database_size: u32) -> Vec<u8> {
        let mut header = vec![0; FRAME_HEADER_BYTES];
        header[0..4].copy_from_slice(&7_u32.to_be_bytes());
        header[DATABASE_SIZE].copy_from_slice(&database_size.to_be_bytes());
        header
    }

    /// SQLite's writes of one transaction of `frames` frames from frame `first` (0-based),
    /// the last one a commit's.
    fn commit(gathered: &mut Gathered, file: &mut File, first: i64, frames: i64) -> Vec<c_int> {
        let mut results = Vec::new();
        for frame in first..first + frames {
            let offset = FIRST_FRAME + frame * FRAME;
            let database_size = if frame == first + frames - 1 { 100 } else { 0 };
            results.push(gathered.write(&header(database_size), offset, &mut file.sink()));
            results.push(gathered.write(
                &[1; PAGE],
                offset + FRAME_HEADER_BYTES as i64,
                &mut file.sink(),
            ));
        }
        results
    }

    #[test]
    fn a_commit_of_many_frames_is_one_write_made_with_its_last_page() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        let results = commit(&mut gathered, &mut file, 0, 50);
        assert!(results.iter().all(|&result| result == ffi::SQLITE_OK));
        assert_eq!(file.writes, vec![(FIRST_FRAME, 50 * FRAME as usize)]);
        assert!(gathered.bytes.is_empty(), "nothing is left for later");
        commit(&mut gathered, &mut file, 50, 3);
        assert_eq!(
            file.writes[1],
            (FIRST_FRAME + 50 * FRAME, 3 * FRAME as usize)
        );
    }

    #[test]
    fn a_commit_of_one_frame_and_a_rewritten_header_go_straight_to_the_file() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        commit(&mut gathered, &mut file, 0, 1);
        assert_eq!(
            file.writes,
            vec![
                (FIRST_FRAME, FRAME_HEADER_BYTES),
                (FIRST_FRAME + FRAME_HEADER_BYTES as i64, PAGE)
            ]
        );
        // SQLite fixes the checksums of frames it rewrote, down to the commit frame's header,
        // and publishes the commit right after: that header is not kept.
        gathered.write(&header(100), FIRST_FRAME, &mut file.sink());
        assert_eq!(file.writes[2], (FIRST_FRAME, FRAME_HEADER_BYTES));
        assert!(gathered.bytes.is_empty());
    }

    #[test]
    fn a_write_elsewhere_first_writes_what_is_gathered() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        // A transaction spills three frames, then rewrites the page of its first in place.
        for frame in 0..3 {
            let offset = FIRST_FRAME + frame * FRAME;
            gathered.write(&header(0), offset, &mut file.sink());
            gathered.write(&[1; PAGE], offset + 24, &mut file.sink());
        }
        assert!(file.writes.is_empty(), "a spill's frames wait");
        gathered.write(&[2; PAGE], FIRST_FRAME + 24, &mut file.sink());
        assert_eq!(
            file.writes,
            vec![(FIRST_FRAME, 3 * FRAME as usize), (FIRST_FRAME + 24, PAGE)]
        );
    }

    #[test]
    fn a_flush_writes_the_run_once() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        gathered.write(&header(0), FIRST_FRAME, &mut file.sink());
        assert_eq!(gathered.flush(&mut file.sink()), ffi::SQLITE_OK);
        assert_eq!(gathered.flush(&mut file.sink()), ffi::SQLITE_OK);
        assert_eq!(file.writes, vec![(FIRST_FRAME, FRAME_HEADER_BYTES)]);
    }

    #[test]
    fn a_commit_longer_than_one_write_takes_runs_that_fit_one_each() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        let frames = 2 * (MOST_GATHERED as i64 / FRAME) + 5;
        commit(&mut gathered, &mut file, 0, frames);
        assert_eq!(file.writes.len(), 3);
        assert!(
            file.writes
                .iter()
                .all(|&(_, length)| length <= MOST_GATHERED)
        );
        let mut end = FIRST_FRAME;
        for &(offset, length) in &file.writes {
            assert_eq!(offset, end, "the runs follow each other");
            end += length as i64;
        }
        assert_eq!(end, FIRST_FRAME + frames * FRAME);
    }

    #[test]
    fn a_commit_frame_that_would_not_fit_goes_straight_to_the_file() {
        let (mut gathered, mut file) = (Gathered::default(), File::default());
        // Frames up to the last whole one that fits, then a commit frame whose header alone
        // would still fit.
        let fitting = MOST_GATHERED as i64 / FRAME;
        for frame in 0..fitting {
            let offset = FIRST_FRAME + frame * FRAME;
            gathered.write(&header(0), offset, &mut file.sink());
            gathered.write(&[1; PAGE], offset + 24, &mut file.sink());
        }
        let last = FIRST_FRAME + fitting * FRAME;
        gathered.write(&header(100), last, &mut file.sink());
        gathered.write(&[1; PAGE], last + 24, &mut file.sink());
        assert_eq!(
            file.writes,
            vec![
                (FIRST_FRAME, (fitting * FRAME) as usize),
                (last, FRAME_HEADER_BYTES),
                (last + 24, PAGE)
            ]
        );
        assert!(gathered.bytes.is_empty());
    }

    #[test]
    fn a_failed_write_is_the_commit_s_failure_and_leaves_nothing_gathered() {
        let mut gathered = Gathered::default();
        let mut file = File {
            fails: true,
            ..File::default()
        };
        let results = commit(&mut gathered, &mut file, 0, 4);
        assert_eq!(results.last(), Some(&ffi::SQLITE_IOERR_WRITE));
        assert!(
            results[..results.len() - 1]
                .iter()
                .all(|&r| r == ffi::SQLITE_OK)
        );
        assert!(gathered.bytes.is_empty());
        assert!(!gathered.awaits_commit_page);
    }
}
