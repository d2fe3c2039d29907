//! Loading the classifier and running one prediction.
//!
//! The model file is read once, whole, through a read-only open: the
//! service never needs write access to it, so guardian can deny every
//! write-open of the model directory without affecting the service. The
//! bytes' SHA-256 is kept so the log says exactly which model answered.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tract_onnx::prelude::{
    DatumType, Framework as _, InferenceModelExt as _, Tensor, TypedFact, TypedModel,
    TypedRunnableModel, tvec,
};

/// The model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (missing, permissions, a directory...).
    #[error("cannot read model {path}: {source}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// tract rejected the file: not ONNX, or an operator it lacks.
    #[error("cannot load model {path}: {reason}")]
    Parse {
        /// The model file.
        path: PathBuf,
        /// tract's error chain, outermost first.
        reason: String,
    },
    /// A valid ONNX model, but not one float32 `[1, features]` input and one
    /// float32 `[1, classes]` output.
    #[error("model {path} is not a classifier this service can serve: {reason}")]
    Shape {
        /// The model file.
        path: PathBuf,
        /// What is wrong with its inputs or outputs.
        reason: String,
    },
}

/// One request could not be answered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PredictError {
    /// Not as many numbers as the model has inputs.
    #[error("expected {expected} features, got {got}")]
    Features {
        /// The model's input width.
        expected: usize,
        /// The request's.
        got: usize,
    },
    /// A feature that float32 cannot hold (too large, or not finite).
    #[error("feature {index} ({value:e}) is out of range for float32")]
    OutOfRange {
        /// Position in the request.
        index: usize,
        /// The value as received.
        value: f64,
    },
    /// tract failed at run time, or produced a score that is not a number.
    #[error("inference failed: {0}")]
    Runtime(String),
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Index of the highest score.
    pub class: usize,
    /// The model's output, one score per class (softmax: they sum to 1).
    pub scores: Vec<f32>,
}

/// A loaded, optimized classifier.
#[derive(Debug)]
pub struct Classifier {
    plan: TypedRunnableModel<TypedModel>,
    features: usize,
    classes: usize,
    sha256: [u8; 32],
    size: u64,
    path: PathBuf,
}

impl Classifier {
    /// Read and compile the model at `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        // std::fs::read opens O_RDONLY: the service holds no write handle.
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        let parse = |e: tract_onnx::prelude::TractError| LoadError::Parse {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(parse)?
            .into_optimized()
            .map_err(parse)?;
        let shape = |reason: String| LoadError::Shape {
            path: path.to_path_buf(),
            reason,
        };
        if model.inputs.len() != 1 || model.outputs.len() != 1 {
            return Err(shape(format!(
                "{} inputs and {} outputs, expected 1 and 1",
                model.inputs.len(),
                model.outputs.len()
            )));
        }
        let input = model.input_fact(0).map_err(parse)?;
        let output = model.output_fact(0).map_err(parse)?;
        let features = row_width(input).map_err(|r| shape(format!("input: {r}")))?;
        let classes = row_width(output).map_err(|r| shape(format!("output: {r}")))?;
        if classes < 2 {
            return Err(shape(format!(
                "output has {classes} class, expected 2 or more"
            )));
        }
        let plan = model.into_runnable().map_err(parse)?;
        Ok(Self {
            plan,
            features,
            classes,
            sha256,
            size: bytes.len() as u64,
            path: path.to_path_buf(),
        })
    }

    /// Classify one input of [`Self::features`] values.
    pub fn predict(&self, features: &[f64]) -> Result<Prediction, PredictError> {
        if features.len() != self.features {
            return Err(PredictError::Features {
                expected: self.features,
                got: features.len(),
            });
        }
        let mut row = Vec::with_capacity(features.len());
        for (index, &value) in features.iter().enumerate() {
            // JSON numbers arrive as f64; the model computes in f32.
            let v = value as f32;
            if !v.is_finite() {
                return Err(PredictError::OutOfRange { index, value });
            }
            row.push(v);
        }
        let runtime = |e: tract_onnx::prelude::TractError| PredictError::Runtime(format!("{e:#}"));
        let input = Tensor::from_shape(&[1, self.features], &row).map_err(runtime)?;
        let outputs = self.plan.run(tvec!(input.into())).map_err(runtime)?;
        let scores: Vec<f32> = outputs
            .first()
            .ok_or_else(|| PredictError::Runtime("the model produced no output".into()))?
            .as_slice::<f32>()
            .map_err(runtime)?
            .to_vec();
        if scores.len() != self.classes || scores.iter().any(|s| !s.is_finite()) {
            return Err(PredictError::Runtime(format!(
                "the model produced {scores:?}, expected {} finite scores",
                self.classes
            )));
        }
        // The first of equal maxima, like numpy's argmax.
        let mut class = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[class] {
                class = i;
            }
        }
        Ok(Prediction { class, scores })
    }

    /// Number of input features.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// SHA-256 of the bytes loaded.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// SHA-256 of the bytes loaded, lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Size in bytes of the file loaded.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `n` for a float32 fact of shape `[1, n]`.
fn row_width(fact: &TypedFact) -> Result<usize, String> {
    if fact.datum_type != DatumType::F32 {
        return Err(format!("type {:?}, expected float32", fact.datum_type));
    }
    match fact.shape.as_concrete() {
        Some(&[1, n]) if n > 0 => Ok(n),
        Some(dims) => Err(format!("shape {dims:?}, expected [1, n]")),
        None => Err(format!(
            "shape {:?} is not fixed, expected [1, n]",
            fact.shape
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("model/classifier.onnx")
    }

    #[test]
    fn loads_the_committed_model() {
        let c = Classifier::load(&model_path()).unwrap();
        assert_eq!((c.features(), c.classes()), (4, 3));
        let p = c.predict(&[2.53, -0.11, 1.8, -0.93]).unwrap();
        assert_eq!(p.class, 0);
        let sum: f32 = p.scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "softmax scores sum to {sum}");
    }

    #[test]
    fn rejects_wrong_width_and_out_of_range() {
        let c = Classifier::load(&model_path()).unwrap();
        assert_eq!(
            c.predict(&[1.0, 2.0]),
            Err(PredictError::Features {
                expected: 4,
                got: 2
            })
        );
        assert_eq!(
            c.predict(&[0.0, 1e39, 0.0, 0.0]),
            Err(PredictError::OutOfRange {
                index: 1,
                value: 1e39
            })
        );
    }

    #[test]
    fn missing_and_garbage_models_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.onnx");
        let e = Classifier::load(&missing).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.onnx"), "{e}");

        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, b"this is not a protobuf\xff\xff").unwrap();
        let e = Classifier::load(&garbage).unwrap_err();
        assert!(matches!(e, LoadError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("garbage.onnx"), "{e}");
    }
}
