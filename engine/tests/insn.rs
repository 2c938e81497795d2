//! Single-instruction checks against known hardware results.
use fx86_engine::host::StdHost;
use fx86_engine::Machine;

fn run(code: &[u8], setup: impl FnOnce(&mut Machine)) -> Machine {
    let mut m = Machine::bare(
        code,
        Box::new(StdHost {
            capture: Some(Vec::new()),
            ..Default::default()
        }),
    );
    setup(&mut m);
    let n = code.len() as u64; // upper bound on instruction count
    let _ = m.run(n);
    m
}

#[test]
fn pcmpeqb_registers() {
    // pcmpeqb xmm4, xmm3
    let m = run(&[0x66, 0x0f, 0x74, 0xe3], |m| {
        m.cpu.xmm[4] = 0x00ff_0011;
        m.cpu.xmm[3] = 0x0011;
    });
    assert_eq!(m.icount, 1);
    assert_eq!(m.cpu.xmm[4], !0u128 ^ 0x00ff_0000);
}
