//! What a user chooses about a training step, applied once: the flags of `basic compile`,
//! `basic train` and `basic plan` (batch, micro-batches, remat, precision, scanned layers,
//! locked towers, the schedule's length) over a model's config, and the mesh, rules and
//! partitioner it runs on. The commands parse their flags into these types and call the library;
//! none of them applies a choice itself, so two commands cannot read one flag two ways.

use crate::error::Result;
use crate::ir::RematPolicy;
use crate::model::config::{Modality, ModelConfig, Precision};
use crate::partition::{Mesh, Rules};
use crate::runtime::Partitioner;

use super::aot::StepProgram;
use super::sharding::Layout;
use super::step::StepOptions;

/// Choices over a model's step; `None` keeps the config's own value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepChoices {
    pub batch: Option<i64>,
    pub microbatches: Option<i64>,
    pub remat: Option<RematPolicy>,
    pub precision: Option<Precision>,
    /// Run identical blocks as one loop over stacked layers (`false` keeps the config's).
    pub scan_layers: bool,
    /// Towers to lock, besides those the config locks.
    pub lock: Vec<Modality>,
    /// Length of the learning-rate schedule (the schedule is part of the program).
    pub steps: Option<i64>,
    /// The tiled loss's block (0: the whole-batch loss).
    pub loss_block: Option<i64>,
}

impl StepChoices {
    /// `base` with the choices applied, validated, and the step options it gives.
    pub fn apply(&self, base: &ModelConfig) -> Result<(ModelConfig, StepOptions)> {
        let mut c = base.clone();
        let t = &mut c.train;
        t.batch = self.batch.unwrap_or(t.batch);
        t.microbatches = self.microbatches.unwrap_or(t.microbatches);
        if let Some(r) = &self.remat {
            t.remat = r.clone();
        }
        t.dtype = self.precision.unwrap_or(t.dtype);
        t.total_steps = self.steps.unwrap_or(t.total_steps);
        t.loss_block = self.loss_block.unwrap_or(t.loss_block);
        for m in &self.lock {
            if !t.locks(*m) {
                t.lock.push(*m);
            }
        }
        c.scan_layers |= self.scan_layers;
        c.validate(&c.name)?;
        let o = StepOptions::from_config(&c)?;
        Ok((c, o))
    }
}

/// Where a step runs: a mesh, a rule file or preset, a partitioner. `None` for the mesh takes
/// the rule file's default mesh, else one device; `None` for the rules is `data_parallel`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayoutChoices {
    pub mesh: Option<String>,
    pub partitioning: Option<String>,
    pub partitioner: Partitioner,
}

impl LayoutChoices {
    /// The partitioning preset or file as given (`data_parallel` when none was): what manifests
    /// record.
    pub fn label(&self) -> String {
        self.partitioning
            .clone()
            .unwrap_or_else(|| "data_parallel".into())
    }

    /// The mesh, rules and partitioner.
    pub fn layout(&self) -> Result<Layout> {
        let rules = match &self.partitioning {
            Some(p) => Rules::find(p)?,
            None => Rules::data_parallel(),
        };
        let mesh = match (&self.mesh, &rules.default_mesh) {
            (Some(m), _) => Mesh::parse(m)?,
            (None, Some(m)) => m.clone(),
            (None, None) => Mesh::single(),
        };
        Ok(Layout {
            mesh,
            rules,
            partitioner: self.partitioner,
        })
    }
}

/// Everything a step program is built from: the config with the choices applied, its options,
/// its layout, whether it donates its state, and the partitioning label manifests record.
#[derive(Clone, Debug)]
pub struct StepSetup {
    pub config: ModelConfig,
    pub options: StepOptions,
    pub layout: Layout,
    pub donate: bool,
    pub partitioning: String,
}

impl StepSetup {
    /// Applies `step` to `base` and lays it out by `layout`.
    pub fn new(
        base: &ModelConfig,
        step: &StepChoices,
        layout: &LayoutChoices,
        donate: bool,
    ) -> Result<StepSetup> {
        let (config, options) = step.apply(base)?;
        Ok(StepSetup {
            config,
            options,
            layout: layout.layout()?,
            donate,
            partitioning: layout.label(),
        })
    }

    /// Builds and emits the step.
    pub fn build(&self) -> Result<StepProgram> {
        StepProgram::build(&self.config, &self.options, &self.layout, self.donate)
    }

    /// Devices the step runs on (the mesh's size).
    pub fn devices(&self) -> usize {
        self.layout.mesh.size() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_override_the_config_and_add_locks() {
        let base = ModelConfig::load("tiny").unwrap();
        let choices = StepChoices {
            batch: Some(8),
            microbatches: Some(2),
            remat: Some(RematPolicy::DotsSaveable),
            precision: Some(Precision::Bf16),
            lock: vec![Modality::Text, Modality::Text],
            steps: Some(7),
            ..Default::default()
        };
        let (c, o) = choices.apply(&base).unwrap();
        assert_eq!((c.train.batch, c.train.microbatches), (8, 2));
        assert_eq!(c.train.total_steps, 7);
        assert_eq!(c.train.lock, vec![Modality::Text]);
        assert_eq!(o.remat, RematPolicy::DotsSaveable);
        assert_eq!(o.compute_dtype, crate::DType::BF16);
        assert!(o.frozen.iter().all(|n| n.starts_with("text/")));
        assert!(!o.frozen.is_empty());
    }

    #[test]
    fn a_batch_that_does_not_split_is_refused_before_building() {
        let base = ModelConfig::load("tiny").unwrap();
        let choices = StepChoices {
            batch: Some(10),
            microbatches: Some(4),
            ..Default::default()
        };
        let e = choices.apply(&base).unwrap_err().to_string();
        assert!(e.contains("micro"), "{e}");
    }

    #[test]
    fn a_layout_without_flags_is_one_device_of_data_parallel() {
        let l = LayoutChoices::default();
        assert_eq!(l.label(), "data_parallel");
        assert_eq!(l.layout().unwrap().mesh.size(), 1);
    }
}
