// Interface strings. French is the default: users are French clinicians and elderly patients.
export const STRINGS = {
  fr: {
    title: "Téléconsultation",
    no_token: "Ouvrez le lien d'invitation reçu pour rejoindre une consultation.",
    device_check: "Vérification du matériel",
    camera: "Caméra",
    microphone: "Micro",
    stethoscope: "Stéthoscope",
    otoscope: "Otoscope / dermatoscope",
    screen: "Écran",
    use_stethoscope: "Utiliser un stéthoscope connecté",
    use_otoscope: "Utiliser un otoscope / dermatoscope",
    level: "Niveau du micro",
    join: "Rejoindre la consultation",
    joining: "Connexion…",
    waiting: "En attente d'admission par le médecin…",
    waiting_room: "Salle d'attente",
    nobody_waiting: "Personne n'attend.",
    admit: "Admettre",
    refuse: "Refuser",
    remove: "Retirer",
    participants: "Participants",
    end: "Terminer la consultation",
    leave: "Quitter",
    mute: "Couper le micro",
    unmute: "Activer le micro",
    camera_off: "Couper la caméra",
    camera_on: "Activer la caméra",
    take_still: "Prendre une photo",
    gallery: "Photos",
    uploading: "Envoi de la photo…",
    upload_retry: "Connexion perdue, nouvel essai…",
    upload_done: "Photo envoyée",
    volume: "Volume",
    enlarge: "Agrandir",
    zoom_in: "Zoom +",
    zoom_out: "Zoom −",
    freeze: "Figer",
    unfreeze: "Reprendre",
    quality_good: "bonne connexion",
    quality_fair: "connexion moyenne",
    quality_poor: "connexion faible",
    refused: "Le médecin n'a pas admis cette connexion.",
    removed: "Vous avez été retiré de la consultation.",
    ended: "La consultation est terminée.",
    closed: "Connexion au serveur perdue.",
    you: "vous",
    physician: "Médecin",
    patient: "Patient",
    companion: "Accompagnant",
    nurse: "Infirmier·e",
    pharmacist: "Pharmacien·ne",
    carer: "Aidant",
    language: "English",
    error: "Erreur",
  },
  en: {
    title: "Teleconsultation",
    no_token: "Open the invitation link you received to join a consultation.",
    device_check: "Device check",
    camera: "Camera",
    microphone: "Microphone",
    stethoscope: "Stethoscope",
    otoscope: "Otoscope / dermatoscope",
    screen: "Screen",
    use_stethoscope: "Use a connected stethoscope",
    use_otoscope: "Use an otoscope / dermatoscope",
    level: "Microphone level",
    join: "Join the consultation",
    joining: "Connecting…",
    waiting: "Waiting for the physician to admit you…",
    waiting_room: "Waiting room",
    nobody_waiting: "Nobody is waiting.",
    admit: "Admit",
    refuse: "Refuse",
    remove: "Remove",
    participants: "Participants",
    end: "End the consultation",
    leave: "Leave",
    mute: "Mute microphone",
    unmute: "Unmute microphone",
    camera_off: "Turn camera off",
    camera_on: "Turn camera on",
    take_still: "Take a photo",
    gallery: "Photos",
    uploading: "Uploading photo…",
    upload_retry: "Connection lost, retrying…",
    upload_done: "Photo sent",
    volume: "Volume",
    enlarge: "Enlarge",
    zoom_in: "Zoom in",
    zoom_out: "Zoom out",
    freeze: "Freeze",
    unfreeze: "Resume",
    quality_good: "good connection",
    quality_fair: "fair connection",
    quality_poor: "poor connection",
    refused: "The physician did not admit this connection.",
    removed: "You were removed from the consultation.",
    ended: "The consultation has ended.",
    closed: "Connection to the server lost.",
    you: "you",
    physician: "Physician",
    patient: "Patient",
    companion: "Companion",
    nurse: "Nurse",
    pharmacist: "Pharmacist",
    carer: "Carer",
    language: "Français",
    error: "Error",
  },
};

let lang = localStorage.getItem("consult.lang") || "fr";

export function t(key) {
  return (STRINGS[lang] && STRINGS[lang][key]) || STRINGS.fr[key] || key;
}

export function currentLang() {
  return lang;
}

export function toggleLang() {
  lang = lang === "fr" ? "en" : "fr";
  localStorage.setItem("consult.lang", lang);
}

/** Fill every element with a data-i18n attribute. */
export function applyStrings(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
}
