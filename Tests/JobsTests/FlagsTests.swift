// Flag parsing: defaults, the seed's snake_case spellings, ignored Ascend-only flags, validation.
import ArgumentParser
import Jobs
import Training
import XCTest

final class FlagsTests: XCTestCase {
  func testDefaultsMatchTheSeed() throws {
    let f = try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "3"])
    XCTAssertNoThrow(try f.checkForTraining())
    let o = try f.trainerOptions(worldSize: 8)
    XCTAssertEqual(o.model.modelName, "mobilenet_v2")
    XCTAssertEqual(o.model.numClasses, 1001)
    XCTAssertEqual(o.model.imageSize, 224)
    XCTAssertEqual(o.batchSize, 256)
    XCTAssertEqual(o.decay, .cosineAnnealing)
    XCTAssertEqual(o.warmupEpochs, 5)
    XCTAssertEqual(o.optimizer, .momentum)
    XCTAssertEqual(o.momentum, 0.9)
    XCTAssertEqual(o.weightDecay, 0.00004)
    XCTAssertEqual(o.labelSmoothing, 0.1)
    XCTAssertNil(o.movingAverageDecay)
    XCTAssertEqual(o.trainDir, "result/8p")
    XCTAssertNil(o.saveCheckpointsSteps)
    XCTAssertEqual(o.keepCheckpointMax, 5)
    XCTAssertEqual(o.restoreExclude, ["MobilenetV2/Logits/"])
    XCTAssertEqual(f.preprocessingName, "inception_v2")
  }

  func testSnakeCaseSpellingsAndIgnoredFlags() throws {
    let f = try TrainFlags.parse([
      "--dataset_dir=/data/imagenet", "--model_name=mobilenet_v2_140", "--num_classes=10", "--image_size=96",
      "--batch_size=64", "--max_train_steps=100", "--learning_rate=0.4", "--learning_rate_decay_type=exponential",
      "--warmup_epochs=0", "--optimizer=sgd", "--weight_decay=0.0001", "--label_smoothing=0",
      "--moving_average_decay=0.9999", "--train_dir=/tmp/t", "--save_checkpoints_steps=50", "--keep_checkpoint_max=2",
      "--log_every_n_steps=5", "--restore_path=/ckpt", "--restore_exclude=MobilenetV2/Logits/,MobilenetV2/Conv_1/",
      "--labels_offset=1", "--iterations_per_loop=10", "--over_dump=False", "--over_dump_path=/tmp/dump",
    ])
    try f.checkForTraining()
    let o = try f.trainerOptions(worldSize: 1)
    XCTAssertEqual(o.model.modelName, "mobilenet_v2_140")
    XCTAssertEqual(o.model.numClasses, 10)
    XCTAssertEqual(o.maxTrainSteps, 100)
    XCTAssertEqual(o.learningRate, 0.4)
    XCTAssertEqual(o.decay, .exponential)
    XCTAssertEqual(o.optimizer, .sgd)
    XCTAssertEqual(o.movingAverageDecay, 0.9999)
    XCTAssertEqual(o.trainDir, "/tmp/t")
    XCTAssertEqual(o.restoreExclude, ["MobilenetV2/Logits/", "MobilenetV2/Conv_1/"])
    XCTAssertEqual(f.labelsOffset, 1)
    XCTAssertEqual(f.ignoredNotes.count, 3)
    XCTAssertTrue(f.ignoredNotes[0].contains("iterations_per_loop"))
  }

  /// Issue 11: both spellings; unset means "1, or what keeps a resumed checkpoint's global batch".
  func testGradientAccumulationFlag() throws {
    let base = ["--dataset-dir=/d", "--max-train-steps=1"]
    XCTAssertNil(try TrainFlags.parse(base).trainerOptions(worldSize: 2).gradientAccumulationSteps)
    XCTAssertEqual(try TrainFlags.parse(base + ["--gradient-accumulation-steps", "4"]).trainerOptions(worldSize: 2).gradientAccumulationSteps, 4)
    XCTAssertEqual(try TrainFlags.parse(base + ["--gradient_accumulation_steps=8"]).trainerOptions(worldSize: 2).gradientAccumulationSteps, 8)
  }

  func testExactlyOneStopCondition() throws {
    XCTAssertThrowsError(try TrainFlags.parse(["--dataset-dir", "/d"]).checkForTraining())
    XCTAssertThrowsError(try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "1", "--max-train-steps", "5"]).checkForTraining())
    XCTAssertThrowsError(try TrainFlags.parse(["--max-epoch", "1"]).checkForTraining())
    XCTAssertThrowsError(try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "1", "--preprocessing-name", "vgg"]).checkForTraining())
    XCTAssertThrowsError(try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "1", "--learning-rate-decay-type", "step"]))
  }

  /// Every numeric flag has a range; a value outside it is one line naming the flag and the value.
  func testOutOfRangeValuesNameTheFlagAndTheValue() throws {
    let base = ["--dataset-dir", "/d", "--max-train-steps", "5"]
    XCTAssertNoThrow(try TrainFlags.parse(base).checkForTraining(), "the defaults are valid")
    let cases: [(String, String)] = [
      ("--learning-rate=-0.1", "--learning-rate -0.1 is out of range: must be > 0"),
      ("--learning_rate=inf", "--learning-rate inf is out of range"),
      ("--momentum=1", "--momentum 1.0 is out of range: must be in [0, 1)"),
      ("--weight-decay=-1", "--weight-decay -1.0 is out of range: must be ≥ 0"),
      ("--label-smoothing=1", "--label-smoothing 1.0 is out of range: must be in [0, 1)"),
      ("--max-epoch=-2", "--max-epoch -2.0 is out of range"),
      ("--save-checkpoints-steps=0", "--save-checkpoints-steps 0 is out of range"),
      ("--log-every-n-steps=0", "--log-every-n-steps 0 is out of range"),
      ("--labels-offset=-1", "--labels-offset -1 is out of range"),
      ("--batch-norm-decay=1", "--batch-norm-decay 1.0 is out of range"),
      ("--decode-threads=0", "--decode-threads 0 is out of range"),
      ("--min-object-covered=2", "--min-object-covered 2.0 is out of range"),
      ("--min-crop-area=0", "--min-crop-area 0.0 is out of range"),
      ("--fusion-mib=0", "--fusion-mib 0.0 is out of range"),
      ("--num-classes=1", "--num-classes 1 is out of range"),
      ("--image-size=33", "--image-size 33 is out of range"),
      ("--gradient-accumulation-steps=0", "--gradient-accumulation-steps 0 is out of range: must be in 1...65536"),
      ("--gradient_accumulation_steps=65537", "--gradient-accumulation-steps 65537 is out of range"),
    ]
    for (flag, expected) in cases {
      // Parsing runs validate() (= checkForTraining), as `worker train` does.
      XCTAssertThrowsError(try TrainFlags.parse(base + [flag]), flag) { e in
        let message = TrainFlags.message(for: e)
        XCTAssertTrue(message.contains(expected), "\(flag): got «\(message)»")
        XCTAssertFalse(message.contains("\n"))
      }
    }
  }

  /// --precision on train and evaluate: fp32 by default, bf16 accepted, anything else one line.
  func testPrecisionFlag() throws {
    let base = ["--dataset-dir", "/d", "--max-epoch", "1"]
    XCTAssertEqual(try TrainFlags.parse(base).precision, .fp32)
    let f = try TrainFlags.parse(base + ["--precision", "bf16"])
    XCTAssertEqual(f.precision, .bf16)
    XCTAssertEqual(try f.trainerOptions(worldSize: 1).precision, .bf16)
    XCTAssertThrowsError(try TrainFlags.parse(base + ["--precision=fp16"])) { e in
      let message = TrainFlags.message(for: e)
      XCTAssertTrue(message.contains("fp16") && message.contains("bf16"), message)
      XCTAssertFalse(message.contains("\n"))
    }
    // --allreduce-dtype (and its snake_case), the older --fp16-allreduce, and their contradiction.
    XCTAssertEqual(try TrainFlags.parse(base).gradientWire, .fp32)
    XCTAssertEqual(try TrainFlags.parse(base + ["--allreduce_dtype", "bf16"]).gradientWire, .bf16)
    XCTAssertEqual(try TrainFlags.parse(base + ["--fp16-allreduce"]).gradientWire, .fp16)
    XCTAssertThrowsError(try TrainFlags.parse(base + ["--fp16-allreduce", "--allreduce-dtype", "bf16"])) { e in
      XCTAssertEqual(TrainFlags.message(for: e), "--fp16-allreduce contradicts --allreduce-dtype bf16")
    }
    XCTAssertThrowsError(try TrainFlags.parse(base + ["--allreduce-dtype", "int8"]))
    let e = try EvalFlags.parse(["--checkpoint_path", "/c", "--dataset_dir", "/d", "--precision", "bf16"])
    XCTAssertEqual(e.precision, .bf16)
    XCTAssertThrowsError(try EvalFlags.parse(["--checkpoint-path", "/c", "--dataset-dir", "/d", "--precision", "int8"]))
  }

  func testEvaluateAndPredictRanges() {
    XCTAssertThrowsError(try EvalFlags.parse(["--checkpoint-path", "/c", "--dataset-dir", "/d", "--batch-size=0"])) { e in
      XCTAssertTrue(EvalFlags.message(for: e).contains("--batch-size 0 is out of range: must be ≥ 1"), EvalFlags.message(for: e))
    }
    XCTAssertThrowsError(try EvalFlags.parse(["--checkpoint-path", "/c", "--dataset-dir", "/d", "--central-fraction=1.5"]))
    XCTAssertThrowsError(try PredictFlags.parse(["--checkpoint-path", "/c", "--top-k=0", "a.jpg"])) { e in
      XCTAssertTrue(PredictFlags.message(for: e).contains("--top-k 0 is out of range"), PredictFlags.message(for: e))
    }
  }

  func testEvaluateFlags() throws {
    let f = try EvalFlags.parse(["--checkpoint_path", "/c", "--dataset_dir", "/d", "--no-use-moving-average"])
    XCTAssertEqual(f.split, "validation")
    XCTAssertEqual(f.centralFraction, 0.875)
    XCTAssertEqual(f.useMovingAverage, false)
    XCTAssertNil(try EvalFlags.parse(["--checkpoint-path", "/c", "--dataset-dir", "/d"]).useMovingAverage)
  }

  func testLabelsFileFormats() throws {
    let p = NSTemporaryDirectory() + "labels-\(getpid()).txt"
    try "0:background\n1:tench\n2:goldfish\n".write(toFile: p, atomically: true, encoding: .utf8)
    XCTAssertEqual(PredictJob.readLabels(p)[2], "goldfish")
    try "T-shirt\nTrouser\n".write(toFile: p, atomically: true, encoding: .utf8)
    XCTAssertEqual(PredictJob.readLabels(p)[1], "Trouser")
    try? FileManager.default.removeItem(atPath: p)
  }

  // Interop (issue 10)
  func testCheckpointFormatAndRestoreMovingAverageFlags() throws {
    let d = try TrainFlags.parse(["--dataset-dir", "/d", "--max-epoch", "1"]).trainerOptions(worldSize: 1)
    XCTAssertEqual(d.checkpointFormat, .both)
    XCTAssertFalse(d.restoreMovingAverage)
    let f = try TrainFlags.parse(["--dataset_dir=/d", "--max_epoch=1", "--checkpoint_format=tf", "--restore_moving_average"])
    let o = try f.trainerOptions(worldSize: 1)
    XCTAssertEqual(o.checkpointFormat, .tf)
    XCTAssertTrue(o.restoreMovingAverage)
    XCTAssertThrowsError(try TrainFlags.parse(["--checkpoint-format", "pickle"]))
    let e = try ExportFlags.parse(["--checkpoint_path", "/ck", "--format", "onnx", "--output", "/tmp/m.onnx", "--image-size", "96"])
    XCTAssertEqual(e.format, .onnx)
    XCTAssertEqual(e.imageSize, 96)
    let p = try PredictFlags.parse(["--checkpoint-path", "/ck", "--model-name", "mobilenet_v2_035", "--num_classes", "10", "a.jpg"])
    XCTAssertEqual(p.modelName, "mobilenet_v2_035")
    XCTAssertEqual(p.numClasses, 10)
  }
}
