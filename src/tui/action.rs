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
    /// Start a training run with the Train pane's options.
    StartTraining,
    /// Stop the training run (it saves a checkpoint first).
    StopTraining,
}

impl Action {
    /// Every action, in the order the help overlay lists them.
    pub const ALL: [Action; 14] = [
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
        Action::StartTraining,
        Action::StopTraining,
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
            Action::StartTraining => "start_training",
            Action::StopTraining => "stop_training",
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
            Action::OpenImage => "open an image (Tab completes the path)",
            Action::NextImage => "next image in the folder",
            Action::PrevImage => "previous image in the folder",
            Action::ClearLabels => "clear the labels",
            Action::StartTraining => "start training (Train pane options)",
            Action::StopTraining => "stop training (saves a checkpoint)",
        }
    }

    /// The action with this keymap name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}
