use super::*;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/status")
        .join(case)
}

#[test]
fn no_crash_kernel() {
    let st = status(&fixture("plain")).unwrap();
    assert!(st.kexec_core);
    assert_eq!(st.loaded, Some(false));
    assert_eq!(st.crash_loaded, Some(false));
    assert_eq!(st.crash_size, Some(0));
    assert!(st.crash_kernel.is_empty());
    assert!(!st.iomem_addresses_hidden);
    assert_eq!(st.lockdown.as_ref().map(|l| l.active()), Some(false));
    assert_eq!(st.kexec_load_disabled, Some(false));
    assert_eq!(st.kexec_load_limit_reboot, Some(-1));
    assert_eq!(st.config.kexec, Some(true));
    assert_eq!(st.config.kexec_file, Some(true));
    assert!(
        st.modes.file.allowed && st.modes.uncompressed.allowed,
        "{st}"
    );
    assert!(st.privilege.can_kexec());
}

#[test]
fn crash_kernel_reserved() {
    let st = status(&fixture("crashkernel")).unwrap();
    assert_eq!(st.crash_loaded, Some(true));
    assert_eq!(st.crash_size, Some(256 * 1024 * 1024));
    assert_eq!(
        st.crash_kernel,
        vec![CrashRange {
            start: 0x6500_0000,
            end: 0x74ff_ffff,
            size: 256 * 1024 * 1024
        }]
    );
    assert_eq!(st.crash_size, Some(st.crash_kernel[0].size));
    let text = st.to_string();
    assert!(text.contains("0x65000000-0x74ffffff (256 MiB)"), "{text}");
}

#[test]
fn lockdown_integrity_blocks_uncompressed_only() {
    let st = status(&fixture("lockdown")).unwrap();
    let l = st.lockdown.clone().unwrap();
    assert_eq!(l.current, "integrity");
    assert_eq!(l.available, ["none", "integrity", "confidentiality"]);
    assert!(st.modes.file.allowed);
    assert!(st.modes.file.caveats.iter().any(|c| c.contains("signed")));
    assert!(!st.modes.uncompressed.allowed);
    assert!(st.modes.uncompressed.blockers[0].contains("lockdown is 'integrity'"));
}

#[test]
fn kexec_load_disabled_blocks_both() {
    let st = status(&fixture("disabled")).unwrap();
    assert_eq!(st.kexec_load_disabled, Some(true));
    assert!(!st.modes.file.allowed && !st.modes.uncompressed.allowed);
    assert!(st.modes.file.blockers[0].contains("kexec_load_disabled"));
}

#[test]
fn config_gz_without_kexec_file_blocks_file_mode() {
    let st = status(&fixture("nokexecfile")).unwrap();
    assert_eq!(
        st.config.source.as_deref(),
        Some(fixture("nokexecfile").join("proc/config.gz").as_path())
    );
    assert_eq!(st.config.kexec_file, Some(false));
    assert_eq!(st.config.kexec, Some(true));
    assert!(!st.modes.file.allowed);
    assert!(st.modes.file.blockers[0].contains("CONFIG_KEXEC_FILE"));
    assert!(st.modes.uncompressed.allowed);
}

#[test]
fn unprivileged_view_hides_iomem_and_lacks_cap() {
    let st = status(&fixture("unprivileged")).unwrap();
    assert!(st.iomem_addresses_hidden);
    assert!(st.crash_kernel.is_empty());
    assert_eq!(st.privilege.euid, Some(1000));
    assert_eq!(st.privilege.cap_sys_boot, Some(false));
    assert!(!st.privilege.can_kexec());
    // No config and no lockdown file: unknown options are not blockers.
    assert!(st.config.kexec.is_none());
    assert!(st.modes.uncompressed.allowed);
    assert!(st.notes.iter().any(|n| n.contains("no kernel config")));
}

#[test]
fn missing_tree_is_no_kexec_not_an_error() {
    let st = status(&fixture("does-not-exist")).unwrap();
    assert!(!st.kexec_core);
    assert!(!st.modes.file.allowed && !st.modes.uncompressed.allowed);
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["kexec_core"], false);
    assert_eq!(json["modes"]["file"]["allowed"], false);
}

#[test]
fn json_has_the_documented_fields() {
    let st = status(&fixture("crashkernel")).unwrap();
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["crash_kernel"][0]["size"], 268_435_456u64);
    assert_eq!(json["lockdown"]["current"], "none");
    assert_eq!(json["modes"]["uncompressed"]["allowed"], true);
}

#[test]
fn lockdown_parsing() {
    let l = parse_lockdown("[none] integrity confidentiality").unwrap();
    assert_eq!(l.current, "none");
    assert!(!l.active());
    assert!(parse_lockdown("none integrity").is_none());
    assert!(parse_lockdown("").is_none());
}

#[test]
fn config_parsing() {
    let mut c = KernelConfig::default();
    parse_config_into(
        "CONFIG_KEXEC=y\n# CONFIG_KEXEC_FILE is not set\nCONFIG_RANDOMIZE_BASE=y\n",
        &mut c,
    );
    assert_eq!(c.kexec, Some(true));
    assert_eq!(c.kexec_file, Some(false));
    assert_eq!(c.kexec_sig_force, Some(false));
    assert_eq!(c.randomize_base, Some(true));
}

#[test]
fn confidential_guests() {
    let flags = |f: &str| format!("processor\t: 0\nflags\t\t: fpu {f}\n");
    assert!(confidential_guest(&flags("tdx_guest hypervisor")).is_some());
    assert!(confidential_guest(&flags("hypervisor sev sev_es"))
        .unwrap()
        .contains("sev_es"));
    assert!(
        confidential_guest(&flags("sev sev_es sme")).is_none(),
        "host"
    );
    assert!(confidential_guest(&flags("hypervisor vmx")).is_none());
    assert!(confidential_guest("").is_none());
}

#[test]
fn kernel_native_cma_route_is_decided_from_version_config_and_area() {
    assert_eq!(release_version("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
    assert_eq!(release_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
    assert_eq!(release_version("6.17"), Some((6, 17)));
    assert_eq!(release_version("garbage"), None);

    let old = kernel_native(
        Some("6.12.118+deb13-cloud-amd64"),
        Some(true),
        Some(0),
        None,
    );
    assert_eq!(old.file_cma_placement, Some(false));
    assert!(old.detail.contains("6.17"), "{}", old.detail);
    let no_area = kernel_native(Some("7.2.13"), Some(true), Some(0), Some(false));
    assert_eq!(no_area.file_cma_placement, Some(false));
    assert!(no_area.detail.contains("cma="), "{}", no_area.detail);
    let no_config = kernel_native(Some("6.17.1"), Some(false), Some(262_144), Some(true));
    assert_eq!(no_config.file_cma_placement, Some(false));
    assert!(no_config.detail.contains("CONFIG_DMA_CMA"));
    let yes = kernel_native(Some("7.2.13"), Some(true), Some(262_144), Some(true));
    assert_eq!(yes.file_cma_placement, Some(true));
    assert!(yes.detail.contains("256 MiB"), "{}", yes.detail);
    // Without CMA sysfs, CmaTotal stands in for the default area.
    let meminfo_only = kernel_native(Some("7.2.13"), None, Some(262_144), None);
    assert_eq!(meminfo_only.file_cma_placement, Some(true));
    assert_eq!(
        kernel_native(None, None, None, None).file_cma_placement,
        None
    );
}

fn tree_from(case: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                fs::create_dir_all(&dest).unwrap();
                copy(&e.path(), &dest);
            } else {
                fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    let t = tempfile::tempdir().unwrap();
    copy(&fixture(case), t.path());
    t
}

#[test]
fn staged_mode_needs_a_visible_reservation() {
    let st = status(&fixture("crashkernel")).unwrap();
    assert!(st.modes.staged.allowed, "{:?}", st.modes.staged);
    // A crash kernel is loaded there: explicit staged would displace it.
    assert!(st
        .modes
        .staged
        .caveats
        .iter()
        .any(|c| c.contains("auto will not")));
    let st = status(&fixture("plain")).unwrap();
    assert!(!st.modes.staged.allowed);
    assert!(st.modes.staged.blockers[0].contains("crashkernel="));
    let st = status(&fixture("unprivileged")).unwrap();
    assert!(st.modes.staged.blockers.iter().any(|b| b.contains("root")));
    let st = status(&fixture("lockdown")).unwrap();
    assert!(!st.modes.staged.allowed);
    assert!(st.to_string().contains("mode staged"));
}

#[test]
fn a_staged_record_shows_in_status_and_kernel_native_route_is_reported() {
    let t = tree_from("crashkernel");
    let root = t.path();
    let state = r#"{"version":2,"boot_id":null,"loaded_at_unix":1,
            "kernel":"/boot/vmlinuz-next","initrd":null,"cmdline":"quiet",
            "panic_cmdline":"quiet reset_devices fastkexec.staged=panic",
            "reservation_start":1694498816,"reservation_end":1962934272,
            "crash_entry":1962000000,"trampoline":2147000000,"header_addr":1961000000,
            "header_len":4096,"header_sum":7,"nonce":"00112233445566778899aabbccddeeff",
            "sampled_blocks":800,"segments":[{"addr":1694498816,"len":4096,"sum":1}]}"#;
    fs::create_dir_all(root.join("run/fastkexec")).unwrap();
    let path = root.join(crate::host::staged_record::STATE_FILE);
    // A version-1 record (before the complete sums): status says what is wrong with it.
    fs::write(&path, state.replace("\"version\":2", "\"version\":1")).unwrap();
    let st = status(root).unwrap();
    assert!(st.staged.is_none());
    assert!(
        st.notes.iter().any(|n| n.contains("record version 1")),
        "{:?}",
        st.notes
    );
    fs::write(&path, state).unwrap();
    let st = status(root).unwrap();
    let rec = st.staged.as_ref().unwrap();
    assert_eq!(rec.kernel, PathBuf::from("/boot/vmlinuz-next"));
    let text = st.to_string();
    assert!(
        text.contains("/boot/vmlinuz-next occupies the crashkernel reservation"),
        "{text}"
    );
    assert!(text.contains("kernel-native route:  no"), "{text}");
    // The crash image went away since: the record no longer occupies it.
    fs::write(root.join("sys/kernel/kexec_crash_loaded"), "0\n").unwrap();
    let text = status(root).unwrap().to_string();
    assert!(text.contains("no crash image is loaded now"), "{text}");
    // A 7.x kernel with a default CMA area.
    fs::write(
        root.join("proc/sys/kernel/osrelease"),
        "7.2.13+deb14-cloud-amd64\n",
    )
    .unwrap();
    fs::write(
        root.join("proc/meminfo"),
        "MemTotal: 1754736 kB\nCmaTotal: 262144 kB\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("sys/kernel/mm/cma/reserved")).unwrap();
    let st = status(root).unwrap();
    assert_eq!(st.kernel_native.file_cma_placement, Some(true));
    assert_eq!(st.kernel_native.cma_total_kb, Some(262_144));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["kernel_native"]["default_cma_area"], true);
    assert_eq!(json["staged"]["sampled_blocks"], 800);
}

#[test]
fn iomem_garbage_is_skipped() {
    let (r, hidden) = parse_crash_ranges("zz-yy : Crash kernel\nnonsense\n  : \n");
    assert!(r.is_empty() && !hidden);
}
