//! Everything a key can do in the app. Keymaps bind keys to these by name, so the help
//! overlay is generated from the same table that dispatches keys.

/// A user-level command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Leave the app.
    Quit,
    /// Show or hide the key bindings.
    Help,
    /// Close the help overlay or the open-image prompt.
    Cancel,
    /// Show the next pane.
    NextPane,
    /// Show the previous pane.
    PrevPane,
    /// Show the Classify pane.
    ShowClassify,
    /// Show the Train pane.
    ShowTrain,
    /// Show the Results pane.
    ShowResults,
    /// Ask for an image path (with Tab completion).
    OpenImage,
    /// Open the next image in the same folder.
    NextImage,
    /// Open the previous image in the same folder.
    PrevImage,
    /// Clear the label editor.
    ClearLabels,
    /// Choose the model, template or ensemble from a list.
    PickModel,
    /// Export this session's classifications and the probabilities on screen (CSV, JSON).
    Export,
    /// Show the latest error in full (a model that failed to load says why).
    ShowMessage,
    /// Start a training run with the Train pane's options.
    StartTraining,
    /// Stop the training run (it saves a checkpoint first).
    StopTraining,
    /// Results pane: the next view (models, confusion, prompts, errors, session, reports).
    NextView,
    /// Results pane: the previous view.
    PrevView,
    /// Results pane: the next model (the next report in the Reports view).
    NextRow,
    /// Results pane: the previous model (the previous report in the Reports view).
    PrevRow,
    /// Results pane: the next misclassified image.
    NextError,
    /// Results pane: the previous misclassified image.
    PrevError,
    /// Results pane: ask for a report folder (with Tab completion).
    OpenReport,
    /// Results pane: read the report selected in the Reports view.
    Choose,
}

impl Action {
    /// Every action, in the order the help overlay lists them.
    pub const ALL: [Action; 25] = [
        Action::Quit,
        Action::Help,
        Action::Cancel,
        Action::NextPane,
        Action::PrevPane,
        Action::ShowClassify,
        Action::ShowTrain,
        Action::ShowResults,
        Action::OpenImage,
        Action::NextImage,
        Action::PrevImage,
        Action::ClearLabels,
        Action::PickModel,
        Action::Export,
        Action::ShowMessage,
        Action::StartTraining,
        Action::StopTraining,
        Action::NextView,
        Action::PrevView,
        Action::NextRow,
        Action::PrevRow,
        Action::NextError,
        Action::PrevError,
        Action::OpenReport,
        Action::Choose,
    ];

    /// The name used in keymap files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Quit => "quit",
            Action::Help => "help",
            Action::Cancel => "cancel",
            Action::NextPane => "next_pane",
            Action::PrevPane => "prev_pane",
            Action::ShowClassify => "show_classify",
            Action::ShowTrain => "show_train",
            Action::ShowResults => "show_results",
            Action::OpenImage => "open_image",
            Action::NextImage => "next_image",
            Action::PrevImage => "prev_image",
            Action::ClearLabels => "clear_labels",
            Action::PickModel => "pick_model",
            Action::Export => "export",
            Action::ShowMessage => "show_message",
            Action::StartTraining => "start_training",
            Action::StopTraining => "stop_training",
            Action::NextView => "next_view",
            Action::PrevView => "prev_view",
            Action::NextRow => "next_row",
            Action::PrevRow => "prev_row",
            Action::NextError => "next_error",
            Action::PrevError => "prev_error",
            Action::OpenReport => "open_report",
            Action::Choose => "choose",
        }
    }

    /// One line for the help overlay.
    pub fn describe(self) -> &'static str {
        match self {
            Action::Quit => "quit",
            Action::Help => "show or hide this help",
            Action::Cancel => "close help or prompt",
            Action::NextPane => "next pane",
            Action::PrevPane => "previous pane",
            Action::ShowClassify => "Classify pane",
            Action::ShowTrain => "Train pane",
            Action::ShowResults => "Results pane",
            Action::OpenImage => "open an image (Tab completes)",
            Action::NextImage => "next image in the folder",
            Action::PrevImage => "previous image in the folder",
            Action::ClearLabels => "clear the labels",
            Action::PickModel => "model, template or ensemble",
            Action::Export => "export results (CSV, JSON)",
            Action::ShowMessage => "show the last error in full",
            Action::StartTraining => "start training (Train options)",
            Action::StopTraining => "stop training, save checkpoint",
            Action::NextView => "Results: next view",
            Action::PrevView => "Results: previous view",
            Action::NextRow => "Results: next model (or report)",
            Action::PrevRow => "Results: previous model (or report)",
            Action::NextError => "Results: next misclassified image",
            Action::PrevError => "Results: previous misclassified image",
            Action::OpenReport => "Results: open a report folder (Tab completes)",
            Action::Choose => "Results: read the selected report",
        }
    }

    /// Whether the action belongs to the Results pane: elsewhere its keys go to the
    /// visible pane as if unbound (arrows move the Train form, Enter edits a field).
    pub fn results_only(self) -> bool {
        matches!(
            self,
            Action::NextView
                | Action::PrevView
                | Action::NextRow
                | Action::PrevRow
                | Action::NextError
                | Action::PrevError
                | Action::OpenReport
                | Action::Choose
        )
    }

    /// The action with this keymap name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}
