from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from apps.firstboot import seed
from apps.firstboot.models import AddressRange, Delivery, Method, OSFamily, PoolFirstBoot
from apps.firstboot.secrets import InvalidKey, parse_key_lines, sha512_crypt
from apps.inventory.models import Datastore, Host
from apps.pools.models import Pool

_USERNAME = forms.RegexField(
    regex=r"^[a-z_][a-z0-9_-]{0,31}\Z", required=False,
    error_messages={"invalid": "A Linux user name: lower-case letters, digits, '-' and '_', at most 32."},
)


class PoolFirstBootForm(forms.ModelForm):
    clear_guest_password = forms.BooleanField(required=False, label="Clear the stored guest password")

    class Meta:
        model = PoolFirstBoot
        fields = [
            "method", "os_family", "domain", "timezone", "windows_timezone", "address_range", "delivery",
            "user_data", "meta_data", "seed_datastore", "admin_username", "authorized_keys",
            "guest_username", "guest_password",
        ]
        widgets = {
            "user_data": forms.Textarea(attrs={"rows": 16, "class": "mono", "spellcheck": "false"}),
            "meta_data": forms.Textarea(attrs={"rows": 4, "class": "mono", "spellcheck": "false"}),
            "authorized_keys": forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
            # Never sent back to the browser; empty keeps the stored one.
            "guest_password": forms.PasswordInput(render_value=False),
        }

    def __init__(self, *args, pool: Pool, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool = pool
        self.fields["seed_datastore"].queryset = Datastore.objects.filter(
            vcenter=pool.template.vcenter_id, hosts__cluster=pool.cluster_id
        ).distinct()
        self.fields["guest_password"].required = False

    def clean_admin_username(self) -> str:
        name = self.cleaned_data["admin_username"].strip()
        if not _USERNAME.regex.match(name):
            raise ValidationError(_USERNAME.error_messages["invalid"])
        return name

    def clean_domain(self) -> str:
        domain = self.cleaned_data["domain"].strip().lower()
        labels = domain.split(".")
        if domain and not all(seed.hostname_for(label) == label and label for label in labels):
            raise ValidationError("A DNS domain like lab.example.com: letters, digits and '-' between dots.")
        return domain

    def clean_authorized_keys(self) -> str:
        text = self.cleaned_data["authorized_keys"]
        try:
            keys = parse_key_lines(text)
        except InvalidKey as exc:
            raise ValidationError(str(exc)) from None
        return "\n".join(k.line for k in keys)

    def clean_guest_username(self) -> str:
        name = self.cleaned_data["guest_username"].strip()
        if name and not _USERNAME.regex.match(name):
            raise ValidationError(_USERNAME.error_messages["invalid"])
        return name

    def clean_guest_password(self) -> str:
        new = self.cleaned_data.get("guest_password") or ""
        if self.data.get(self.add_prefix("clear_guest_password")):
            return ""
        return new or (self.instance.guest_password if self.instance.pk else "")

    def clean(self):
        data = super().clean()
        method = data.get("method")
        rng = data.get("address_range")
        if method == Method.NONE:
            if rng is not None:
                self.add_error("address_range", "Fixed addresses need a first-boot method that sets them.")
            return data
        if rng is not None and rng.size < self.pool.size:
            self.add_error("address_range", f"The range holds {rng.size} addresses but the pool keeps "
                                            f"{self.pool.size} VMs; widen it or choose another.")
        if method == Method.CLOUD_INIT:
            if data.get("os_family") == OSFamily.WINDOWS:
                self.add_error("os_family", "cloud-init here is for Linux guests; use customisation (Sysprep).")
            # Render for a sample clone, so a broken template fails here and not in a fill job.
            sample = seed.Identity(
                vm_name=f"{self.pool.name}-0a1b2c3d", hostname=seed.hostname_for(f"{self.pool.name}-0a1b2c3d"),
                pool=self.pool.name, instance_id="sample", domain=data.get("domain") or "",
                ip="192.0.2.10" if rng else None, prefix=24 if rng else None,
                admin_username=data.get("admin_username") or "vmportal",
                password_hash=sha512_crypt("sample", "sample"),
                ssh_authorized_keys=tuple((data.get("authorized_keys") or "").splitlines()),
            )
            try:
                seed.user_data(data.get("user_data") or "", sample)
            except seed.FirstBootError as exc:
                self.add_error("user_data", str(exc))
            try:
                seed.meta_data(data.get("meta_data") or "", sample, with_network=True)
            except seed.FirstBootError as exc:
                self.add_error("meta_data", str(exc))
            if not (data.get("user_data") or "").strip():
                self.add_error("user_data", "cloud-init needs user-data (at least '#cloud-config').")
            if data.get("delivery") == Delivery.SEED_ISO:
                self._check_seed_datastore(data.get("seed_datastore"))
        if data.get("guest_username") and not data.get("guest_password") and (
            data.get("guest_username") != data.get("admin_username") or data.get("os_family") == OSFamily.WINDOWS
        ):
            self.add_error("guest_password", "Give the guest account's password, or use the first-boot admin "
                                             "account (its password is each clone's own).")
        return data

    def _check_seed_datastore(self, ds: Datastore | None) -> None:
        ds = ds or self.pool.datastore
        if ds is None:
            return  # the service picks one every host of the cluster mounts
        hosts = Host.objects.filter(cluster=self.pool.cluster_id)
        missing = [h.name for h in hosts if not h.datastores.filter(pk=ds.pk).exists()]
        if missing:
            self.add_error("seed_datastore", f"{ds.name} is not mounted on {', '.join(missing[:3])}: a clone "
                                             "placed there could not read its seed ISO.")


class AddressRangeForm(forms.ModelForm):
    class Meta:
        model = AddressRange
        fields = ["name", "network", "first", "last", "gateway", "dns_servers"]


class SSHKeyForm(forms.Form):
    name = forms.CharField(max_length=80, required=False, help_text="e.g. laptop; default: the key's comment.")
    public_key = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false",
                                     "placeholder": "ssh-ed25519 AAAA… you@laptop"}),
        help_text="The contents of your .pub file (e.g. ~/.ssh/id_ed25519.pub). Never the private key.",
    )
