//! The pause image: one static executable that waits forever, in a tar archive for
//! `docker import`. Its container exists only to own the network namespace httpjail configures
//! and the user's container joins.
//!
//! Why make it here rather than pull one: `--docker-run` must work without a registry, and the
//! image must contain nothing that could do anything. The program is a few machine
//! instructions in a minimal ELF file (one `PT_LOAD` segment, no sections, no libc):
//!
//! - x86_64: `mov eax, 34 (pause); syscall; jmp back`;
//! - aarch64: `x0..x3 = 0; x8 = 73 (ppoll); svc 0; b back` (aarch64 has no `pause` system
//!   call; `ppoll(NULL, 0, NULL, NULL)` waits for a signal the same way).
//!
//! As the container's PID 1 it ignores every signal it has no handler for (all of them), so
//! only `SIGKILL` from outside (`docker rm -f`, `docker kill`) ends it.

/// The image's name; the tag changes whenever the program or the archive does.
pub const IMAGE: &str = "httpjail-pause:1";

/// Path of the program inside the image.
pub const PROGRAM_PATH: &str = "/pause";

/// Where the code is loaded; the file is mapped whole from offset 0.
const BASE: u64 = 0x40_0000;
const ELF_HEADER_LEN: usize = 64;
const PROGRAM_HEADER_LEN: usize = 56;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// x86_64: `b8 22 00 00 00` mov eax, 34; `0f 05` syscall; `eb f7` jmp -9 (to the mov).
const X86_64_CODE: &[u8] = &[0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7];

/// aarch64, one little-endian word per instruction.
const AARCH64_CODE: [u32; 7] = [
    0xd280_0000, // mov x0, #0      (fds = NULL)
    0xd280_0001, // mov x1, #0      (nfds = 0)
    0xd280_0002, // mov x2, #0      (timeout = NULL: wait forever)
    0xd280_0003, // mov x3, #0      (sigmask = NULL)
    0xd280_0928, // mov x8, #73     (__NR_ppoll)
    0xd400_0001, // svc #0
    0x17ff_fffa, // b -24 bytes     (back to the first mov)
];

/// The pause program for a CPU architecture (as `std::env::consts::ARCH` names it), or `None`
/// when httpjail has none for it.
pub fn program(arch: &str) -> Option<Vec<u8>> {
    match arch {
        "x86_64" => Some(elf(EM_X86_64, X86_64_CODE)),
        "aarch64" => {
            let code: Vec<u8> = AARCH64_CODE.iter().flat_map(|w| w.to_le_bytes()).collect();
            Some(elf(EM_AARCH64, &code))
        }
        _ => None,
    }
}

/// A static little-endian ELF64 executable that runs `code` (see `elf(5)`).
fn elf(machine: u16, code: &[u8]) -> Vec<u8> {
    let headers = ELF_HEADER_LEN + PROGRAM_HEADER_LEN;
    let size = (headers + code.len()) as u64;
    let mut f = Vec::with_capacity(headers + code.len());
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&machine.to_le_bytes()); // e_machine
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&(BASE + headers as u64).to_le_bytes()); // e_entry
    f.extend_from_slice(&(ELF_HEADER_LEN as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(ELF_HEADER_LEN as u16).to_le_bytes()); // e_ehsize
    f.extend_from_slice(&(PROGRAM_HEADER_LEN as u16).to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // The one program header: load the whole file at BASE, readable and executable.
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    f.extend_from_slice(&size.to_le_bytes()); // p_filesz
    f.extend_from_slice(&size.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    f
}

/// A tar archive (POSIX ustar) holding `program` as `/pause`, mode 0755, owned by root, for
/// `docker import -`.
pub fn image_tar(program: &[u8]) -> Vec<u8> {
    let mut tar = header(PROGRAM_PATH.trim_start_matches('/'), program.len());
    tar.extend_from_slice(program);
    tar.resize(tar.len().next_multiple_of(512), 0);
    // End of archive: two zero blocks.
    tar.extend_from_slice(&[0; 1024]);
    tar
}

/// A 512-byte ustar header for a regular file.
fn header(name: &str, size: usize) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    let mut put = |at: usize, field: &[u8]| h[at..at + field.len()].copy_from_slice(field);
    put(0, name.as_bytes()); // name (up to 100 bytes)
    put(100, b"0000755\0"); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{size:011o}\0").as_bytes()); // size
    put(136, b"00000000000\0"); // mtime: fixed, so the archive is reproducible
    put(148, b"        "); // checksum: spaces while it is computed
    put(156, b"0"); // typeflag: regular file
    put(257, b"ustar\0"); // magic
    put(263, b"00"); // version
    put(265, b"root"); // uname
    put(297, b"root"); // gname
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn elf_headers_describe_one_loadable_segment() {
        for (arch, machine, code_len) in [("x86_64", 62, 9), ("aarch64", 183, 28)] {
            let f = program(arch).unwrap();
            assert_eq!(&f[..4], b"\x7fELF", "{arch}");
            assert_eq!((f[4], f[5], f[6]), (2, 1, 1), "64-bit, little-endian, v1");
            assert_eq!(u16_at(&f, 16), 2, "ET_EXEC");
            assert_eq!(u16_at(&f, 18), machine);
            assert_eq!(u64_at(&f, 24), BASE + 120, "entry right after the headers");
            assert_eq!(u64_at(&f, 32), 64, "program headers after the ELF header");
            assert_eq!(
                (u16_at(&f, 52), u16_at(&f, 54), u16_at(&f, 56)),
                (64, 56, 1)
            );
            assert_eq!(
                u32::from_le_bytes(f[64..68].try_into().unwrap()),
                1,
                "PT_LOAD"
            );
            assert_eq!(u32::from_le_bytes(f[68..72].try_into().unwrap()), 5, "R+X");
            assert_eq!(u64_at(&f, 96), f.len() as u64, "p_filesz covers the file");
            assert_eq!(f.len(), 120 + code_len);
        }
        assert_eq!(program("riscv64"), None);
    }

    #[test]
    fn aarch64_branch_goes_back_to_the_start() {
        // `b` encodes a signed word offset in its low 26 bits.
        let branch = AARCH64_CODE[6];
        assert_eq!(branch >> 26, 0b000101);
        let offset = ((branch & 0x03ff_ffff) << 6) as i32 >> 6;
        assert_eq!(offset * 4, -24);
    }

    #[test]
    fn the_pause_program_runs_and_waits() {
        let Some(bytes) = program(std::env::consts::ARCH) else {
            eprintln!("SKIPPED: no pause program for {}", std::env::consts::ARCH);
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pause");
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        // It must still be waiting after a while (a wrong instruction would crash it at once,
        // a wrong system call would make it spin or exit).
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(child.try_wait().unwrap(), None, "the pause program ended");
        // Waiting, not spinning: it has used (almost) no CPU time.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (state, utime): (&str, u64) = (fields[0], fields[11].parse().unwrap());
        assert_eq!(state, "S", "sleeping in the system call");
        assert!(utime <= 1, "it spins: {utime} ticks of user time");
        // A signal without handler other than KILL/STOP ends an ordinary process.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
    }

    #[test]
    fn the_tar_archive_is_one_executable_file() {
        let program = program("x86_64").unwrap();
        let tar = image_tar(&program);
        assert_eq!(tar.len(), 512 + 512 + 1024, "header, one data block, end");
        let h = &tar[..512];
        assert_eq!(&h[..6], b"pause\0");
        assert_eq!(&h[100..107], b"0000755");
        let size = usize::from_str_radix(std::str::from_utf8(&h[124..135]).unwrap(), 8).unwrap();
        assert_eq!(size, program.len());
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..263], b"ustar\0");
        // The checksum is the byte sum with the checksum field counted as spaces.
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].fill(b' ');
        assert_eq!(stored, copy.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&tar[512..512 + program.len()], &program[..]);
        assert!(tar[512 + program.len()..].iter().all(|b| *b == 0));
    }

    /// The archive is read by a real tar implementation the same way.
    #[test]
    fn tar_reads_the_archive() {
        let tar_path = ["/usr/bin/tar", "/bin/tar"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(tar_path) = tar_path else {
            eprintln!("SKIPPED: no tar");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("pause.tar");
        let program = program("x86_64").unwrap();
        std::fs::write(&archive, image_tar(&program)).unwrap();
        let out = std::process::Command::new(tar_path)
            .args(["-tvf"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.starts_with("-rwxr-xr-x root/root"), "{listing}");
        assert!(listing.trim_end().ends_with(" pause"), "{listing}");
        assert!(
            listing.contains(&format!(" {} ", program.len())),
            "{listing}"
        );
    }
}
