//! A training loop stopped by a signal ([`seg_train::interrupt`]), asked for with
//! `interrupt::request` as the signal handler asks: in a test binary of its own, since the
//! request is the process's and would stop any other test's run.

mod common;

use common::setup;
use seg_train::error::TrainError;
use seg_train::Trainer;

#[test]
fn a_stopped_run_checkpoints_its_step_and_resumes_to_the_weights_of_one_never_stopped() {
    let no_periodic = |dir: &std::path::Path, steps: usize, resume: bool| {
        let mut s = setup(dir, steps, 0.01, resume);
        s.config.checkpoint_every = 0;
        s
    };
    let whole = tempfile::tempdir().unwrap();
    Trainer::new(no_periodic(whole.path(), 4, false))
        .unwrap()
        .run()
        .unwrap();

    // Asked mid-run: the step under way (the first) finishes, and its checkpoint is written.
    let cut = tempfile::tempdir().unwrap();
    seg_train::interrupt::request();
    let e = Trainer::new(no_periodic(cut.path(), 4, false))
        .unwrap()
        .run()
        .err()
        .unwrap();
    let checkpoint = cut.path().join(seg_train::checkpoint::FILE);
    match &e {
        TrainError::Interrupted { step: 1, checkpoint: c } if *c == checkpoint => {}
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("interrupted at step 1: its checkpoint"), "{e}");
    assert!(!seg_train::interrupt::take(), "the request is acted on once");
    assert_eq!(seg_train::checkpoint::read_meta(&checkpoint).unwrap().step, 1);
    Trainer::new(no_periodic(cut.path(), 4, true)).unwrap().run().unwrap();
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        std::fs::read(whole.path().join(seg_train::checkpoint::FILE)).unwrap()
    );

    // Asked in the last step: the final checkpoint stands and the run ends there; its resume
    // has nothing left to train.
    let last = tempfile::tempdir().unwrap();
    seg_train::interrupt::request();
    let e = Trainer::new(no_periodic(last.path(), 1, false))
        .unwrap()
        .run()
        .err()
        .unwrap();
    assert!(matches!(e, TrainError::Interrupted { step: 1, .. }), "{e}");
    let outcome = Trainer::new(no_periodic(last.path(), 1, true)).unwrap().run().unwrap();
    assert_eq!((outcome.first_step, outcome.steps), (1, 1));
}
