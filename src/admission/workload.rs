//! Where images live in each kind of object, read through lean views that borrow their strings.
//!
//! A full `k8s_openapi` Pod decode allocates every field of the Pod; these views decode only the
//! image fields and the pull secrets, and skip the rest of the object unparsed.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;

/// The kinds whose objects carry Pod specs, and where the spec sits in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Pod,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController:
    /// `spec.template.spec`.
    PodTemplate,
    /// CronJob: `spec.jobTemplate.spec.template.spec`.
    CronJob,
}

impl WorkloadKind {
    /// The kind of an object by its `kind`, or `None` when it holds no Pod spec.
    pub fn of(kind: &str) -> Option<Self> {
        match kind {
            "Pod" => Some(WorkloadKind::Pod),
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => {
                Some(WorkloadKind::PodTemplate)
            }
            "CronJob" => Some(WorkloadKind::CronJob),
            _ => None,
        }
    }

    /// Field path of the Pod spec inside the object.
    pub fn spec_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "spec",
            WorkloadKind::PodTemplate => "spec.template.spec",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.spec",
        }
    }

    /// Moves the Pod spec of an object of this kind out of its view.
    pub fn pod_spec<'a>(self, object: ObjectView<'a>) -> PodSpec<'a> {
        let spec = object.spec;
        match self {
            WorkloadKind::Pod => PodSpec {
                containers: spec.containers,
                init_containers: spec.init_containers,
                ephemeral_containers: spec.ephemeral_containers,
                volumes: spec.volumes,
                image_pull_secrets: spec.image_pull_secrets,
            },
            WorkloadKind::PodTemplate => spec.template.map(|t| t.spec).unwrap_or_default(),
            WorkloadKind::CronJob => {
                spec.job_template.and_then(|j| j.spec.template).map(|t| t.spec).unwrap_or_default()
            }
        }
    }
}

/// Any object registry-gate reviews, read in one pass whatever its kind: the Pod-level lists of
/// a Pod's `spec`, a workload's `spec.template`, a CronJob's `spec.jobTemplate`, and a
/// ConfigMap's `data`. Which part counts is chosen by kind afterwards ([`WorkloadKind::pod_spec`]);
/// reading the object once instead of capturing it and reading it again halves the decode.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectView<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub spec: SpecView<'a>,
    /// Only ConfigMaps have it (the policy ConfigMap's review reads it).
    #[serde(default)]
    pub data: Option<std::collections::BTreeMap<String, String>>,
}

/// The union of the `spec` shapes of the reviewed kinds; absent parts stay empty.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    init_containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    ephemeral_containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    volumes: Vec<Volume<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    image_pull_secrets: Vec<LocalObjectReference<'a>>,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController.
    #[serde(default, borrow, deserialize_with = "optional_object")]
    template: Option<PodTemplate<'a>>,
    /// CronJob.
    #[serde(default, borrow, deserialize_with = "optional_object")]
    job_template: Option<JobTemplate<'a>>,
}

#[derive(Debug, Default, Deserialize)]
struct PodTemplate<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    spec: PodSpec<'a>,
}

#[derive(Debug, Default, Deserialize)]
struct JobTemplate<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    spec: JobSpec<'a>,
}

#[derive(Debug, Default, Deserialize)]
struct JobSpec<'a> {
    #[serde(default, borrow, deserialize_with = "optional_object")]
    template: Option<PodTemplate<'a>>,
}

/// The parts of a Pod spec that registry-gate reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec<'a> {
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub init_containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub ephemeral_containers: Vec<Container<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub volumes: Vec<Volume<'a>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Container<'a> {
    #[serde(default, borrow)]
    pub image: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct Volume<'a> {
    #[serde(default, borrow, deserialize_with = "optional_object")]
    pub image: Option<ImageVolumeSource<'a>>,
}

/// `volumes[].image`: an OCI image mounted as a volume (Kubernetes 1.31+).
#[derive(Debug, Deserialize)]
pub struct ImageVolumeSource<'a> {
    #[serde(default, borrow)]
    pub reference: Option<Text<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct LocalObjectReference<'a> {
    #[serde(default, borrow)]
    pub name: Option<Text<'a>>,
}

/// A string that borrows from the request body when it has no escapes, and owns otherwise.
/// (serde borrows a bare `Cow<str>` field, but not one inside an `Option`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// A struct read from a JSON object only.
///
/// serde's derived structs also accept an array of their fields in order, so `"object": []`
/// would read as an object with no images, and `"containers": [["evil.example/x"]]` as a
/// container whose image is the first element. The API server never sends either; a body that
/// does is malformed, and must fail closed rather than be read generously.
pub struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// An optional object: `null` or absent is `None`, anything but an object is an error.
pub(super) fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<ObjectOnly<T>>::deserialize(deserializer)?.map(|object| object.0))
}

/// Kubernetes clients may send `null` for an absent object.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(optional_object(deserializer)?.unwrap_or_default())
}

/// Kubernetes clients may send `null` for an empty list. Each item must be an object.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Option::<Vec<ObjectOnly<T>>>::deserialize(deserializer)?.unwrap_or_default();
    // `ObjectOnly` is a newtype, so this collects in place, without a second allocation.
    Ok(items.into_iter().map(|item| item.0).collect())
}

/// Which list of a Pod spec an image sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageField {
    Containers,
    InitContainers,
    EphemeralContainers,
    /// `volumes[].image.reference`
    Volumes,
}

/// Where one image sits in an object: `spec.template.spec.initContainers[0].image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLocation {
    pub spec_path: &'static str,
    pub field: ImageField,
    pub index: usize,
}

impl fmt::Display for ImageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (list, leaf) = match self.field {
            ImageField::Containers => ("containers", "image"),
            ImageField::InitContainers => ("initContainers", "image"),
            ImageField::EphemeralContainers => ("ephemeralContainers", "image"),
            ImageField::Volumes => ("volumes", "image.reference"),
        };
        write!(f, "{}.{list}[{}].{leaf}", self.spec_path, self.index)
    }
}

impl PodSpec<'_> {
    /// Every image of the spec with its location, in document order by list. A container
    /// without an image yields `""`, which the parser refuses: the API server would too.
    pub fn images(&self, spec_path: &'static str) -> impl Iterator<Item = (ImageLocation, &str)> {
        let volumes = self.volumes.iter().enumerate().filter_map(move |(index, volume)| {
            let image = volume.image.as_ref()?;
            let location = ImageLocation { spec_path, field: ImageField::Volumes, index };
            Some((location, image.reference.as_deref().unwrap_or("")))
        });
        container_images(&self.containers, spec_path, ImageField::Containers)
            .chain(container_images(&self.init_containers, spec_path, ImageField::InitContainers))
            .chain(container_images(&self.ephemeral_containers, spec_path, ImageField::EphemeralContainers))
            .chain(volumes)
    }
}

fn container_images<'s>(
    containers: &'s [Container<'_>],
    spec_path: &'static str,
    field: ImageField,
) -> impl Iterator<Item = (ImageLocation, &'s str)> {
    containers.iter().enumerate().map(move |(index, container)| {
        (ImageLocation { spec_path, field, index }, container.image.as_deref().unwrap_or(""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_location_of_a_cron_job_is_found() {
        let json = r#"{"kind":"CronJob","spec":{"jobTemplate":{"spec":{"template":{"spec":{
            "containers":[{"name":"a","image":"ghcr.io/acme/a"}],
            "initContainers":[{"name":"b","image":"b"}],
            "volumes":[{"name":"v","emptyDir":{}},{"name":"w","image":{"reference":"quay.io/x/y"}}]}}}}}}"#;
        let object: ObjectView = serde_json::from_str(json).expect("valid");
        let spec = WorkloadKind::CronJob.pod_spec(object);
        let images: Vec<String> = spec
            .images(WorkloadKind::CronJob.spec_path())
            .map(|(location, image)| format!("{location}={image}"))
            .collect();
        assert_eq!(
            images,
            [
                "spec.jobTemplate.spec.template.spec.containers[0].image=ghcr.io/acme/a",
                "spec.jobTemplate.spec.template.spec.initContainers[0].image=b",
                "spec.jobTemplate.spec.template.spec.volumes[1].image.reference=quay.io/x/y",
            ]
        );
    }

    #[test]
    fn arrays_where_objects_belong_are_refused() {
        for json in [
            r#"[]"#,
            r#"{"spec":[]}"#,
            r#"{"spec":{"containers":[["evil.example.com/x"]]}}"#,
            r#"{"spec":{"template":["x"]}}"#,
            r#"{"spec":{"template":{"spec":[[{"image":"evil.example.com/x"}]]}}}"#,
            r#"{"spec":{"jobTemplate":{"spec":[{"template":{}}]}}}"#,
            r#"{"spec":{"volumes":[{"image":["evil.example.com/x"]}]}}"#,
            r#"{"spec":{"imagePullSecrets":[["s"]]}}"#,
        ] {
            let read = serde_json::from_str::<ObjectOnly<ObjectView>>(json);
            assert!(read.is_err(), "{json} must be refused");
            assert!(sonic_rs::from_str::<ObjectOnly<ObjectView>>(json).is_err(), "{json} must be refused");
        }
        let object =
            serde_json::from_str::<ObjectOnly<ObjectView>>(r#"{"spec":{"containers":null,"template":null}}"#);
        assert!(object.is_ok(), "null is an absent object or list");
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let json = r#"{"spec":{"containers":[{"image":"nginx"}]}}"#;
        let object: ObjectView = serde_json::from_str(json).expect("valid");
        let spec = WorkloadKind::Pod.pod_spec(object);
        assert!(matches!(spec.containers[0].image, Some(Text(Cow::Borrowed("nginx")))));
    }
}
