"""fitchat's screens: home, model, chat, and the modal dialogs."""
